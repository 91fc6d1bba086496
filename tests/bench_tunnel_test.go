package tests

import (
	"bytes"
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
// pod), all set up at once in one lab, with the same tools:
//
//	iperf3 -c DST -t 5 -P 1|4 -J   (TCP, Gbit/s received)
//	ping -c 20 -i 0.05 -q DST      (average RTT, ms)
//
// The machine is shared, so load drifts from minute to minute: a round
// measures every path one after the other (in an order that rotates from
// round to round), ratios are taken within a round, between measurements
// seconds apart, and the median over rounds is reported. Each sub-benchmark
// is one measure (tcp-1stream, tcp-4streams, rtt) with one metric per path
// plus weft's ratios; -benchtime Nx reports N rounds (for N > 1 after a
// first round that the benchmark runner discards). BENCHMARKS.md has the
// numbers.

// benchMTU is the tunnel MTU of every tunnel measured: weft's own default
// on the lab's underlay (1500 minus 80), given to the standalone tunnels too
// so that all carry the same segments.
const benchMTU = 1420

// benchIperfSeconds is the length of one iperf3 run.
const benchIperfSeconds = 5

// benchPath is a way from a sender to a receiver's address.
type benchPath struct {
	name string                                                                 // metric suffix
	run  func(ctx context.Context, name string, args ...string) ([]byte, error) // at the sender
	dst  netip.Addr
	pids []int // the tunnel's processes on both ends (none: the kernel's)
}

// benchSample is one measurement on one path.
type benchSample struct {
	value    float64
	cpuPerGB float64 // CPU seconds of the path's processes per GB received; 0: not measured
}

// benchMeasure is one thing measured on every path, and how weft is
// compared with another path (a ratio, a difference).
type benchMeasure struct {
	name, unit string
	measure    func(*testing.B, context.Context, benchPath) benchSample
	cmpUnit    string
	compare    func(weft, other float64) float64
}

var benchMeasures = []benchMeasure{
	{"tcp-1stream", "Gbit/s", func(b *testing.B, ctx context.Context, p benchPath) benchSample { return iperf(b, ctx, p, 1) },
		"x", func(w, o float64) float64 { return w / o }},
	{"tcp-4streams", "Gbit/s", func(b *testing.B, ctx context.Context, p benchPath) benchSample { return iperf(b, ctx, p, 4) },
		"x", func(w, o float64) float64 { return w / o }},
	{"rtt", "ms", pingAvg, "ms-more", func(w, o float64) float64 { return w - o }},
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

// BenchmarkTunnel compares weft's data path with the underlay and with
// standalone wireguard-go, as described at the top of this file:
//
//	sudo go test -run '^$' -bench Tunnel -benchtime 3x -v ./tests/
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
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		b.Fatal(err)
	}
	src, dst := nodes[0], nodes[1]
	if _, err := dst.Spawn(ctx, "iperf3", "-s"); err != nil {
		b.Fatal(err)
	}
	var paths []benchPath
	if benchWant("underlay") {
		paths = append(paths, benchPath{name: "underlay", run: src.Exec, dst: dst.Addr})
	}

	standalone := []struct{ name, bin, hint string }{
		{"debian", "/usr/bin/wireguard-go", "apt-get install wireguard-go"},
		{"upstream", wireguardGoUpstream(), "scripts/build-wireguard-go, or make bench"},
	}
	for i, s := range standalone {
		if !benchWant(s.name) {
			continue
		}
		if _, err := exec.LookPath("wg"); err != nil {
			b.Run("wireguard-go-"+s.name, func(b *testing.B) { b.Skip("needs wg (apt-get install wireguard-tools)") })
			continue
		}
		if _, err := os.Stat(s.bin); err != nil {
			b.Run("wireguard-go-"+s.name, func(b *testing.B) { b.Skipf("needs %s (%s)", s.bin, s.hint) })
			continue
		}
		addrs, pids := startStandalone(b, ctx, nodes, s.bin, fmt.Sprintf("wgb%d", i), 51820+i, byte(201+i))
		paths = append(paths, benchPath{name: s.name, run: src.Exec, dst: addrs[1], pids: pids})
	}

	tunnel := startWeft(b, ctx, nodes)
	daemons := []int{src.DaemonPID(), dst.DaemonPID()}
	if benchWant("weft") {
		paths = append(paths, benchPath{name: "weft", run: src.Exec, dst: tunnel[dst.Name], pids: daemons})
	}
	if benchWant("weft-pods") {
		pods := benchPods(b, ctx, nodes)
		if _, err := pods[1].Spawn(ctx, "iperf3", "-s"); err != nil {
			b.Fatal(err)
		}
		paths = append(paths, benchPath{name: "weft-pods", run: pods[0].Exec, dst: pods[1].IP(), pids: daemons})
	}
	for _, p := range paths {
		waitReach(b, ctx, p)
	}

	for _, m := range benchMeasures {
		b.Run(m.name, func(b *testing.B) {
			values := map[string][]float64{} // metric unit -> one value per round
			for round := 0; round < b.N; round++ {
				got := map[string]benchSample{}
				for i := range paths {
					p := paths[(i+round)%len(paths)]
					s := m.measure(b, ctx, p)
					got[p.name] = s
					unit := m.unit + "-" + p.name
					values[unit] = append(values[unit], s.value)
					if s.cpuPerGB > 0 {
						unit := "cpu-s/GB-" + p.name
						values[unit] = append(values[unit], s.cpuPerGB)
					}
				}
				var line []string
				for _, p := range paths {
					line = append(line, fmt.Sprintf("%s %.3g", p.name, got[p.name].value))
				}
				b.Logf("round %d, %s: %s", round+1, m.unit, strings.Join(line, ", "))
				for _, wn := range []string{"weft", "weft-pods"} {
					w, ok := got[wn]
					if !ok {
						continue
					}
					for _, base := range []string{"underlay", "upstream", "debian"} {
						o, ok := got[base]
						if !ok {
							continue
						}
						unit := m.cmpUnit + "-" + wn + "-vs-" + base
						values[unit] = append(values[unit], m.compare(w.value, o.value))
						if w.cpuPerGB > 0 && o.cpuPerGB > 0 {
							unit := "x-cpu-" + wn + "-vs-" + base
							values[unit] = append(values[unit], w.cpuPerGB/o.cpuPerGB)
						}
					}
				}
			}
			for unit, v := range values {
				b.ReportMetric(median(v), unit)
			}
		})
	}
}

// benchWant says whether the path name is measured: all of them unless
// $WEFT_BENCH_PATHS lists some (comma-separated: underlay, debian,
// upstream, weft, weft-pods), for quicker runs while working on one path.
func benchWant(name string) bool {
	list := os.Getenv("WEFT_BENCH_PATHS")
	return list == "" || slices.Contains(strings.Split(list, ","), name)
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
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs one iperf3 TCP test of streams parallel streams and returns the
// received Gbit/s, and the CPU time the tunnel's processes spent per GB. The
// server may still be closing the previous test: a busy server is asked
// again.
func iperf(b *testing.B, ctx context.Context, p benchPath, streams int) benchSample {
	b.Helper()
	var last error
	for try := 0; try < 5; try++ {
		cpu0 := cpuSeconds(b, p.pids)
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
			s := benchSample{value: r.End.SumReceived.BitsPerSecond / 1e9}
			if len(p.pids) > 0 && r.End.SumReceived.Bytes > 0 {
				s.cpuPerGB = (cpuSeconds(b, p.pids) - cpu0) / (r.End.SumReceived.Bytes / 1e9)
			}
			return s
		}
		if !strings.Contains(last.Error(), "busy") {
			break
		}
		time.Sleep(time.Second) // the server frees itself; nothing to poll
	}
	b.Fatalf("iperf3 -P %d to %s: %v", streams, p.dst, last)
	return benchSample{}
}

// clockTicks is USER_HZ, the unit of times in /proc/PID/stat: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// cpuSeconds is the user and system CPU time the processes pids have used,
// all their threads together.
func cpuSeconds(b *testing.B, pids []int) float64 {
	b.Helper()
	var total float64
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			b.Fatalf("CPU time of pid %d: %v", pid, err)
		}
		// The command name (field 2) may hold spaces; fields after it
		// start behind its closing parenthesis: utime and stime are the
		// 12th and 13th of them.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 13 {
			b.Fatalf("CPU time of pid %d: short /proc/%d/stat", pid, pid)
		}
		for _, v := range f[11:13] {
			t, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				b.Fatalf("CPU time of pid %d: %v", pid, err)
			}
			total += float64(t) / clockTicks
		}
	}
	return total
}

// pingRTT matches ping's summary: rtt min/avg/max/mdev = a/b/c/d ms.
var pingRTT = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/[0-9.]+/[0-9.]+ ms`)

// pingAvg returns the average RTT in ms of 20 pings 50 ms apart.
func pingAvg(b *testing.B, ctx context.Context, p benchPath) benchSample {
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
	return benchSample{value: v}
}

// startStandalone runs `wireguard-go -f iface` (bin) in both nodes, peered
// with each other on port over the underlay, addressed 10.<net>.0.<i+1>/24
// with benchMTU, as an operator would with wg and ip. It returns the tunnel
// addresses and the processes' pids; the devices run until the lab is
// closed.
func startStandalone(b *testing.B, ctx context.Context, nodes []*netlab.Node, bin, iface string, port int, subnet byte) ([]netip.Addr, []int) {
	b.Helper()
	dir := b.TempDir()
	keys := make([]wgtypes.Key, len(nodes))
	addrs := make([]netip.Addr, len(nodes))
	var pids []int
	for i := range nodes {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		keys[i] = k
		addrs[i] = netip.AddrFrom4([4]byte{10, subnet, 0, byte(i + 1)})
	}
	for i, n := range nodes {
		p, err := n.Spawn(ctx, bin, "-f", iface)
		if err != nil {
			b.Fatal(err)
		}
		pids = append(pids, p.PID())
		sock := filepath.Join(n.WireGuardDir(), iface+".sock")
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if !p.Running() || time.Now().After(deadline) {
				b.Fatalf("%s in %s: no UAPI socket %s: %s", bin, n.Name, sock, p.Output())
			}
			time.Sleep(20 * time.Millisecond) // a file appearing; no event to wait on
		}
		keyFile := filepath.Join(dir, n.Name+"-"+iface+".key")
		if err := os.WriteFile(keyFile, []byte(keys[i].String()+"\n"), 0o600); err != nil {
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
				b.Fatal(err)
			}
		}
	}
	return addrs, pids
}

// startWeft starts weft daemons meshed on nodes, logging at info as in
// production (debug costs CPU on the data path's side), with the tunnel
// MTU of the standalone tunnels, and returns their tunnel addresses.
func startWeft(b *testing.B, ctx context.Context, nodes []*netlab.Node) map[string]netip.Addr {
	b.Helper()
	// Later flags win: info logging, as in production, and the MTU of the
	// standalone tunnels.
	// $WEFT_BENCH_WEFT_ARGS: more daemon flags, for comparing settings
	// (e.g. --userspace-io=wireguard-go) run after run.
	args := append([]string{"--log-level", "info", "--mtu", strconv.Itoa(benchMTU)}, strings.Fields(os.Getenv("WEFT_BENCH_WEFT_ARGS"))...)
	startAll(b, ctx, nodes, func(*netlab.Node) []string {
		return seedArgs(nodes[0], nodes, args...)
	})
	addrs := waitMesh(b, ctx, nodes)
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
