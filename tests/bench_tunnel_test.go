package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/netlab"
)

// The data-path benchmark: node1 sends to node2 over the plain underlay,
// over standalone wireguard-go tunnels (Debian's package and the upstream
// build of the version weft embeds), and over weft (node to node, and pod to
// pod), all in one lab, one path after the other, with the same tools:
//
//	iperf3 -c DST -t 5 -P 1|4 -J   (TCP, Gbit/s received)
//	ping -c 20 -i 0.05 -q DST      (average RTT, ms)
//
// Every sub-benchmark is one path; a round of it is one measurement of
// each, and -benchtime Nx takes the median of N rounds. The last
// sub-benchmark, weft-vs, reports weft's ratios to the underlay and to the
// upstream standalone wireguard-go. BENCHMARKS.md has the numbers.

// benchMTU is the tunnel MTU of every tunnel measured: weft's own default
// on the lab's underlay (1500 minus 80), given to the standalone tunnels too
// so that all carry the same segments.
const benchMTU = 1420

// benchIperfSeconds is the length of one iperf3 run.
const benchIperfSeconds = 5

// pathStats are the medians of the rounds of one path.
type pathStats struct {
	gbit1, gbit4, rttMs float64
}

// benchPath is a way from a sender to a receiver's address.
type benchPath struct {
	run func(ctx context.Context, name string, args ...string) ([]byte, error) // at the sender
	dst netip.Addr
}

// wireguardGoUpstream is the upstream standalone wireguard-go that
// scripts/build-wireguard-go builds (make bench runs it):
// $WEFT_WIREGUARD_GO_UPSTREAM, else .cache/bin/wireguard-go-upstream of this
// checkout.
func wireguardGoUpstream() string {
	if p := os.Getenv("WEFT_WIREGUARD_GO_UPSTREAM"); p != "" {
		return p
	}
	p, _ := filepath.Abs(filepath.Join("..", ".cache", "bin", "wireguard-go-upstream"))
	return p
}

func BenchmarkTunnel(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: runs tunnels in network namespaces")
	}
	for _, tool := range []string{"iperf3", "ping", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("needs %s (apt-get install iperf3 iputils-ping iproute2)", tool)
		}
	}
	weft := needWeft(b)
	lab := netlab.NewForTest(b, netlab.Config{WeftBinary: weft})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		b.Fatal(err)
	}
	src, dst := nodes[0], nodes[1]
	if _, err := dst.Spawn(ctx, "iperf3", "-s"); err != nil {
		b.Fatal(err)
	}
	results := map[string]pathStats{}
	measure := func(name string, p benchPath) {
		b.Run(name, func(b *testing.B) {
			st := measurePath(b, ctx, p)
			results[name] = st
			reportPath(b, st)
		})
	}

	measure("underlay", benchPath{run: src.Exec, dst: dst.Addr})

	standalone := []struct{ name, bin, hint string }{
		{"wireguard-go-debian", "/usr/bin/wireguard-go", "apt-get install wireguard-go"},
		{"wireguard-go-upstream", wireguardGoUpstream(), "scripts/build-wireguard-go, or make bench"},
	}
	for i, s := range standalone {
		reason := ""
		if _, err := exec.LookPath("wg"); err != nil {
			reason = "needs wg (apt-get install wireguard-tools)"
		} else if _, err := os.Stat(s.bin); err != nil {
			reason = fmt.Sprintf("needs %s (%s)", s.bin, s.hint)
		}
		if reason != "" {
			b.Run(s.name, func(b *testing.B) { b.Skip(reason) })
			continue
		}
		iface := fmt.Sprintf("wgb%d", i)
		addrs, stop := startStandalone(b, ctx, nodes, s.bin, iface, 51820+i, byte(201+i))
		measure(s.name, benchPath{run: src.Exec, dst: addrs[1]})
		stop()
	}

	tunnel := startWeft(b, ctx, nodes)
	measure("weft", benchPath{run: src.Exec, dst: tunnel[dst.Name]})
	pods := benchPods(b, ctx, nodes)
	if _, err := pods[1].Spawn(ctx, "iperf3", "-s"); err != nil {
		b.Fatal(err)
	}
	measure("weft-pods", benchPath{run: pods[0].Exec, dst: pods[1].IP()})

	b.Run("weft-vs", func(b *testing.B) {
		w, ok := results["weft"]
		if !ok {
			b.Skip("no weft results")
		}
		report := func(base string, unitSuffix string) {
			o, ok := results[base]
			if !ok || o.gbit1 == 0 || o.gbit4 == 0 {
				return
			}
			b.ReportMetric(w.gbit1/o.gbit1, "x-"+unitSuffix+"-1stream")
			b.ReportMetric(w.gbit4/o.gbit4, "x-"+unitSuffix+"-4streams")
			b.ReportMetric(w.rttMs-o.rttMs, "ms-rtt-over-"+unitSuffix)
		}
		report("underlay", "underlay")
		report("wireguard-go-upstream", "upstream")
		report("wireguard-go-debian", "debian")
		if u, ok := results["wireguard-go-upstream"]; ok && w.gbit1 < 0.9*u.gbit1 {
			b.Logf("weft single-stream %.2f Gbit/s is below upstream standalone wireguard-go's %.2f", w.gbit1, u.gbit1)
		}
	})
}

func reportPath(b *testing.B, st pathStats) {
	b.ReportMetric(st.gbit1, "Gbit/s-1stream")
	b.ReportMetric(st.gbit4, "Gbit/s-4streams")
	b.ReportMetric(st.rttMs, "ms-rtt")
}

// measurePath measures p b.N times and returns the medians.
func measurePath(b *testing.B, ctx context.Context, p benchPath) pathStats {
	b.Helper()
	waitReach(b, ctx, p)
	var g1, g4, rtt []float64
	for i := 0; i < b.N; i++ {
		g1 = append(g1, iperf(b, ctx, p, 1))
		g4 = append(g4, iperf(b, ctx, p, 4))
		rtt = append(rtt, pingAvg(b, ctx, p))
	}
	return pathStats{gbit1: median(g1), gbit4: median(g4), rttMs: median(rtt)}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// waitReach waits until one ping over p answers (a tunnel's first
// handshake, a route being installed).
func waitReach(b *testing.B, ctx context.Context, p benchPath) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := p.run(ctx, "ping", "-c", "1", "-W", "1", "-q", p.dst.String())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s unreachable: %v", p.dst, err)
		}
	}
}

// iperf3Report is the part of `iperf3 -J` output we read.
type iperf3Report struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs one iperf3 TCP test of streams parallel streams and returns the
// received Gbit/s. The server may still be closing the previous test: a busy
// server is asked again.
func iperf(b *testing.B, ctx context.Context, p benchPath, streams int) float64 {
	b.Helper()
	var last error
	for try := 0; try < 5; try++ {
		out, err := p.run(ctx, "iperf3", "-c", p.dst.String(), "-t", strconv.Itoa(benchIperfSeconds),
			"-P", strconv.Itoa(streams), "-J")
		var r iperf3Report
		if jerr := json.Unmarshal(out, &r); jerr != nil {
			last = errors.Join(err, fmt.Errorf("parse iperf3 -J output: %w", jerr))
		} else if r.Error != "" {
			last = fmt.Errorf("iperf3: %s", r.Error)
		} else if err != nil {
			last = err
		} else if r.End.SumReceived.BitsPerSecond <= 0 {
			last = fmt.Errorf("iperf3 reports no bytes received: %s", out)
		} else {
			return r.End.SumReceived.BitsPerSecond / 1e9
		}
		if !strings.Contains(last.Error(), "busy") {
			break
		}
		time.Sleep(time.Second) // the server frees itself; nothing to poll
	}
	b.Fatalf("iperf3 -P %d to %s: %v", streams, p.dst, last)
	return 0
}

// pingRTT matches ping's summary: rtt min/avg/max/mdev = a/b/c/d ms.
var pingRTT = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/[0-9.]+/[0-9.]+ ms`)

// pingAvg returns the average RTT in ms of 20 pings 50 ms apart.
func pingAvg(b *testing.B, ctx context.Context, p benchPath) float64 {
	b.Helper()
	out, err := p.run(ctx, "ping", "-c", "20", "-i", "0.05", "-q", p.dst.String())
	if err != nil {
		b.Fatalf("ping %s: %v", p.dst, err)
	}
	m := pingRTT.FindSubmatch(out)
	if m == nil {
		b.Fatalf("ping %s: no RTT summary in %q", p.dst, out)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		b.Fatalf("ping %s: %v", p.dst, err)
	}
	return v
}

// startStandalone runs `wireguard-go -f iface` (bin) in both nodes, peered
// with each other on port over the underlay, addressed 10.<net>.0.<i+1>/24
// with benchMTU, as an operator would with wg and ip. It returns the tunnel
// addresses and a function that stops both devices.
func startStandalone(b *testing.B, ctx context.Context, nodes []*netlab.Node, bin, iface string, port int, subnet byte) ([]netip.Addr, func()) {
	b.Helper()
	dir := b.TempDir()
	keys := make([]wgtypes.Key, len(nodes))
	addrs := make([]netip.Addr, len(nodes))
	for i := range nodes {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		keys[i] = k
		addrs[i] = netip.AddrFrom4([4]byte{10, subnet, 0, byte(i + 1)})
	}
	var procs []*netlab.Process
	stop := func() {
		for _, p := range procs {
			_ = p.Stop(5 * time.Second)
		}
	}
	for i, n := range nodes {
		p, err := n.Spawn(ctx, bin, "-f", iface)
		if err != nil {
			stop()
			b.Fatal(err)
		}
		procs = append(procs, p)
		sock := filepath.Join(n.WireGuardDir(), iface+".sock")
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if !p.Running() || time.Now().After(deadline) {
				stop()
				b.Fatalf("%s in %s: no UAPI socket %s: %s", bin, n.Name, sock, p.Output())
			}
			time.Sleep(20 * time.Millisecond) // a file appearing; no event to wait on
		}
		keyFile := filepath.Join(dir, n.Name+"-"+iface+".key")
		if err := os.WriteFile(keyFile, []byte(keys[i].String()+"\n"), 0o600); err != nil {
			stop()
			b.Fatal(err)
		}
		peer := 1 - i
		cmds := [][]string{
			{"wg", "set", iface, "private-key", keyFile, "listen-port", strconv.Itoa(port),
				"peer", keys[peer].PublicKey().String(), "allowed-ips", addrs[peer].String() + "/32",
				"endpoint", netip.AddrPortFrom(nodes[peer].Addr, uint16(port)).String()},
			{"ip", "addr", "add", addrs[i].String() + "/24", "dev", iface},
			{"ip", "link", "set", iface, "mtu", strconv.Itoa(benchMTU), "up"},
		}
		for _, c := range cmds {
			if _, err := n.Exec(ctx, c[0], c[1:]...); err != nil {
				stop()
				b.Fatal(err)
			}
		}
	}
	return addrs, stop
}

// startWeft starts weft daemons meshed on nodes, logging at info as in
// production (debug costs CPU on the data path's side), with the tunnel
// MTU of the standalone tunnels, and returns their tunnel addresses.
func startWeft(b *testing.B, ctx context.Context, nodes []*netlab.Node) map[string]netip.Addr {
	b.Helper()
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	for _, n := range nodes {
		err := n.StartDaemon("--peers", nodes[0].Addr.String(), "--ipalloc-init", "seed="+strings.Join(names, ","),
			"--wg-mode", "userspace", "--metrics-addr", "", "--log-level", "info", "--mtu", strconv.Itoa(benchMTU))
		if err != nil {
			b.Fatalf("start daemon on %s: %v", n.Name, err)
		}
	}
	for _, n := range nodes {
		if err := n.WaitSocket(ctx); err != nil {
			b.Fatal(err)
		}
	}
	addrs := map[string]netip.Addr{}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := meshed(ctx, nodes, addrs)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("no mesh: %v", err)
		}
		time.Sleep(200 * time.Millisecond) // polling the daemons' status
	}
	for _, n := range nodes {
		out, err := n.Exec(ctx, "ip", "-o", "link", "show", "dev", "weft")
		if err != nil {
			b.Fatal(err)
		}
		if !strings.Contains(string(out), fmt.Sprintf(" mtu %d ", benchMTU)) {
			b.Fatalf("weft on %s does not have MTU %d: %s", n.Name, benchMTU, out)
		}
		for _, line := range strings.Split(n.Log(), "\n") {
			if strings.Contains(line, "userspace WireGuard running") {
				b.Logf("%s: %s", n.Name, line)
			}
		}
	}
	return addrs
}

// meshed checks that every node is ready and sees every other alive, and
// fills addrs with the nodes' tunnel addresses.
func meshed(ctx context.Context, nodes []*netlab.Node, addrs map[string]netip.Addr) error {
	for _, n := range nodes {
		st, err := peersStatus(ctx, n)
		if err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		if !st.Ready {
			return fmt.Errorf("%s not ready: %s", n.Name, st.Reason)
		}
		a, err := netip.ParseAddr(st.TunnelAddr)
		if err != nil {
			return fmt.Errorf("%s has no tunnel address", n.Name)
		}
		addrs[n.Name] = a
		alive := 0
		for _, p := range st.Peers {
			if p.State == "alive" && p.TunnelAddr != "" {
				alive++
			}
		}
		if alive != len(nodes)-1 {
			return fmt.Errorf("%s sees %d of %d peers alive", n.Name, alive, len(nodes)-1)
		}
	}
	return nil
}

// benchPods gives each node one pod through weft-cni.
func benchPods(b *testing.B, ctx context.Context, nodes []*netlab.Node) []*netlab.Pod {
	b.Helper()
	var pods []*netlab.Pod
	for _, n := range nodes {
		p, err := n.AddPod(ctx, netlab.PodConfig{Namespace: "default", Name: "bench-" + n.Name})
		if err != nil {
			b.Fatalf("add pod on %s: %v\ndaemon log:\n%s", n.Name, err, n.LogTail(30))
		}
		pods = append(pods, p)
	}
	return pods
}
