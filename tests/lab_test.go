//go:build linux

package tests

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// The self-tests of netlab: the lab itself must be right before weft is
// tested on it.

func labCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// reach fails the test unless from reaches dst with ICMP within a few
// seconds.
func reach(t *testing.T, ctx context.Context, netns string, dst netip.Addr) netlab.EchoReply {
	t.Helper()
	var last error
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r, err := netlab.Echo(ctx, netns, dst, time.Second)
		if err == nil {
			return r
		}
		last = err
	}
	t.Fatalf("%s cannot reach %s: %v", filepath.Base(netns), dst, last)
	return netlab.EchoReply{}
}

// unreachable fails the test if from gets an answer from dst.
func unreachable(t *testing.T, ctx context.Context, netns string, dst netip.Addr) {
	t.Helper()
	if r, err := netlab.Echo(ctx, netns, dst, 500*time.Millisecond); err == nil {
		t.Fatalf("%s reaches %s (reply from %s, ttl %d); want no answer", filepath.Base(netns), dst, r.From, r.TTL)
	}
}

func addNodes(t *testing.T, lab *netlab.Lab, site, count int) []*netlab.Node {
	t.Helper()
	var nodes []*netlab.Node
	for range count {
		n, err := lab.AddNode(site)
		if err != nil {
			t.Fatalf("add node to site %d: %v", site, err)
		}
		nodes = append(nodes, n)
	}
	return nodes
}

func TestLabUnderlay(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	nodes := addNodes(t, lab, 0, 3)
	for i, n := range nodes {
		want := netip.MustParseAddr(fmt.Sprintf("172.30.0.%d", i+1))
		if n.Addr != want || n.Name != fmt.Sprintf("node%d", i+1) {
			t.Errorf("node %d is %s at %s; want node%d at %s", i, n.Name, n.Addr, i+1, want)
		}
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if r := reach(t, ctx, a.Netns, b.Addr); r.TTL != 64 {
				t.Errorf("%s -> %s: reply ttl %d, want 64 (same L2)", a.Name, b.Name, r.TTL)
			}
		}
	}
	// And with the real ping, inside the node.
	out, err := nodes[0].Exec(ctx, "ping", "-c", "1", "-W", "2", nodes[2].Addr.String())
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	if !strings.Contains(string(out), "1 received") {
		t.Errorf("ping output: %s", out)
	}
	// A node has eth0 and lo only, no route out of a single site.
	out, err = nodes[1].Exec(ctx, "ip", "-o", "route")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "default") {
		t.Errorf("a node of a single-site lab has a default route:\n%s", out)
	}
}

func TestLabSitesOnlyThroughRouter(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	a := addNodes(t, lab, 0, 2)
	s1, err := lab.AddSite(false)
	if err != nil {
		t.Fatal(err)
	}
	b := addNodes(t, lab, s1, 1)[0]
	if b.Addr != netip.MustParseAddr("172.30.1.1") {
		t.Fatalf("first node of site 1 is at %s, want 172.30.1.1", b.Addr)
	}
	if r := reach(t, ctx, a[0].Netns, a[1].Addr); r.TTL != 64 {
		t.Errorf("same site: reply ttl %d, want 64", r.TTL)
	}
	// Nodes of site 0 got their default route when site 1 came.
	for _, n := range []*netlab.Node{a[0], b} {
		if r := reach(t, ctx, n.Netns, a[1].Addr); n == b && r.TTL != 63 {
			t.Errorf("%s -> %s across sites: reply ttl %d, want 63 (one hop through the router)", n.Name, a[1].Name, r.TTL)
		}
	}
	if r := reach(t, ctx, a[0].Netns, b.Addr); r.TTL != 63 {
		t.Errorf("across sites: reply ttl %d, want 63", r.TTL)
	}
	// No shared L2: with the router not forwarding, nothing gets across.
	rt := filepath.Base(lab.Router())
	sysctl := func(v string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "exec", rt, "sysctl", "-w", "net.ipv4.ip_forward="+v).CombinedOutput(); err != nil {
			t.Fatalf("sysctl in router: %v: %s", err, out)
		}
	}
	sysctl("0")
	unreachable(t, ctx, a[0].Netns, b.Addr)
	unreachable(t, ctx, b.Netns, a[1].Addr)
	sysctl("1")
	reach(t, ctx, a[0].Netns, b.Addr)
}

func TestLabNATSite(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	pub := addNodes(t, lab, 0, 1)[0]
	s, err := lab.AddSite(true)
	if err != nil {
		t.Fatal(err)
	}
	natted := addNodes(t, lab, s, 1)[0]

	// Out: works, and the other side sees the router's address.
	reach(t, ctx, natted.Netns, pub.Addr)
	ln, err := pub.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c.RemoteAddr()
		c.Close()
	}()
	c, err := natted.Dial(ctx, "tcp", netip.AddrPortFrom(pub.Addr, 7000).String())
	if err != nil {
		t.Fatalf("from behind NAT: %v", err)
	}
	c.Close()
	remote := <-accepted
	if host, _, _ := net.SplitHostPort(fmt.Sprint(remote)); host != "172.30.0.254" {
		t.Errorf("connection from behind NAT comes from %v; want the router's 172.30.0.254", remote)
	}

	// In: neither ICMP nor TCP.
	unreachable(t, ctx, pub.Netns, natted.Addr)
	unreachable(t, ctx, pub.Netns, netip.MustParseAddr(fmt.Sprintf("172.30.%d.254", s)))
	ln2, err := natted.Listen("tcp", ":7001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if c, err := pub.Dial(dctx, "tcp", netip.AddrPortFrom(natted.Addr, 7001).String()); err == nil {
		c.Close()
		t.Fatal("a node outside opened a connection into the NAT'ed site")
	}
	if c, err := pub.Dial(dctx, "tcp", "172.30.0.254:7001"); err == nil {
		c.Close()
		t.Fatal("the router forwards a port nobody asked for")
	}

	// With a port forward on the router, the outside gets in on that port.
	public, err := lab.PortForward(natted, "tcp", 7001)
	if err != nil {
		t.Fatal(err)
	}
	if public.String() != "172.30.0.254:7001" {
		t.Errorf("public address %s", public)
	}
	go func() {
		if c, err := ln2.Accept(); err == nil {
			io.WriteString(c, "behind-nat")
			c.Close()
		}
	}()
	c, err = pub.Dial(ctx, "tcp", public.String())
	if err != nil {
		t.Fatalf("through the port forward: %v", err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "behind-nat" {
		t.Errorf("through the port forward read %q", b)
	}
	// A cut holds for forwarded ports too.
	if err := lab.Cut(pub, natted); err != nil {
		t.Fatal(err)
	}
	dctx2, cancel2 := context.WithTimeout(ctx, time.Second)
	defer cancel2()
	if c, err := pub.Dial(dctx2, "tcp", public.String()); err == nil {
		c.Close()
		t.Error("cut nodes connect through the port forward")
	}
}

func TestLabCutAndHeal(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 3)
	s1, err := lab.AddSite(false)
	if err != nil {
		t.Fatal(err)
	}
	far := addNodes(t, lab, s1, 1)[0]
	ul := filepath.Base(lab.Underlay)
	before := nftRules(t, ul)

	for _, pair := range [][2]*netlab.Node{{n[0], n[1]}, {n[0], far}} {
		a, b := pair[0], pair[1]
		reach(t, ctx, a.Netns, b.Addr)
		if err := lab.Cut(a, b); err != nil {
			t.Fatal(err)
		}
		if err := lab.Cut(a, b); err != nil {
			t.Fatalf("cut twice: %v", err)
		}
		unreachable(t, ctx, a.Netns, b.Addr)
		unreachable(t, ctx, b.Netns, a.Addr)
		reach(t, ctx, a.Netns, n[2].Addr) // the others are fine
		reach(t, ctx, b.Netns, n[2].Addr)
		if err := lab.Heal(b, a); err != nil {
			t.Fatal(err)
		}
		reach(t, ctx, a.Netns, b.Addr)
		reach(t, ctx, b.Netns, a.Addr)
	}
	if after := nftRules(t, ul); after != before {
		t.Errorf("heal left rules behind in the underlay:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	if err := lab.Isolate(n[2]); err != nil {
		t.Fatal(err)
	}
	unreachable(t, ctx, n[0].Netns, n[2].Addr)
	unreachable(t, ctx, far.Netns, n[2].Addr)
	reach(t, ctx, n[0].Netns, n[1].Addr)
	if err := lab.Rejoin(n[2]); err != nil {
		t.Fatal(err)
	}
	reach(t, ctx, far.Netns, n[2].Addr)

	if err := lab.CutGroups(n[:2], []*netlab.Node{n[2], far}); err != nil {
		t.Fatal(err)
	}
	unreachable(t, ctx, n[1].Netns, far.Addr)
	unreachable(t, ctx, n[0].Netns, n[2].Addr)
	reach(t, ctx, n[2].Netns, far.Addr)
	if err := lab.HealGroups(n[:2], []*netlab.Node{n[2], far}); err != nil {
		t.Fatal(err)
	}
	reach(t, ctx, n[1].Netns, far.Addr)
	if after := nftRules(t, ul); after != before {
		t.Errorf("heal left rules behind:\n%s", after)
	}
}

// nftRules lists the rules of the lab's bridge table in netns (the nft
// tool is a test dependency; netlab itself does not use it).
func nftRules(t *testing.T, netns string) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return "" // no nft: the comparison is skipped
	}
	out, err := exec.Command("ip", "netns", "exec", netns, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	var rules []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "drop") {
			rules = append(rules, strings.TrimSpace(line))
		}
	}
	return strings.Join(rules, "\n")
}

// bridgeConfList is a reference bridge + host-local network, for testing
// the lab's libcni path without weft's own plugin.
func bridgeConfList(subnet, dataDir string) []byte {
	return []byte(fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "labnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "subnet": %q, "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}}
  ]
}`, subnet, dataDir))
}

func TestLabPodThroughLibcni(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		t.Skip("needs the reference CNI plugins in /usr/lib/cni (Debian package containernetworking-plugins)")
	}
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 2)
	// A long-running process of the node, started before the pod: it must
	// see the pod's netns appear and go (mount propagation).
	sleeper, err := n[0].Spawn(ctx, "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	conf := bridgeConfList("10.99.1.0/24", filepath.Join(n[0].Dir, "ipam"))
	pod, err := n[0].AddPod(ctx, netlab.PodConfig{Namespace: "default", Name: "web", NetConfList: conf})
	if err != nil {
		t.Fatal(err)
	}
	if !netip.MustParsePrefix("10.99.1.0/24").Contains(pod.IP()) {
		t.Fatalf("pod got %v, want an address of 10.99.1.0/24; result %+v", pod.IP(), pod.Result())
	}
	if !strings.Contains(pod.Netns, lab.Prefix+"-p-node1-web") {
		t.Errorf("pod netns %s", pod.Netns)
	}
	// The bridge plugin ran inside node1: cni0 is there, not on the host
	// nor on node2.
	if _, err := n[0].Exec(ctx, "ip", "link", "show", "cni0"); err != nil {
		t.Errorf("cni0 not in node1: %v", err)
	}
	if _, err := n[1].Exec(ctx, "ip", "link", "show", "cni0"); err == nil {
		t.Error("cni0 in node2")
	}
	reach(t, ctx, pod.Netns, netip.MustParseAddr("10.99.1.1")) // its gateway, on node1
	reach(t, ctx, pod.Netns, n[0].Addr)                        // node1's underlay address
	if _, err := pod.Exec(ctx, "ping", "-c", "1", "-W", "2", n[0].Addr.String()); err != nil {
		t.Error(err)
	}
	reach(t, ctx, pod.Netns, netip.MustParseAddr("127.0.0.1")) // lo is up
	if err := pod.Check(ctx); err != nil {
		t.Errorf("CNI CHECK: %v", err)
	}
	if err := n[0].CNIConfig().GetStatusNetworkList(ctx, pod.NetConfList()); err != nil {
		t.Errorf("CNI STATUS: %v", err)
	}
	name := filepath.Base(pod.Netns)
	if fs := statfsIn(t, ctx, sleeper.PID(), pod.Netns); fs != "nsfs" {
		t.Errorf("a node process started before the pod sees %s as %q, want nsfs", name, fs)
	}

	if err := pod.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pod.Delete(ctx); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if _, err := os.Stat(pod.Netns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pod netns still there: %v", err)
	}
	if mountedIn(t, sleeper.PID(), name) {
		t.Errorf("the pod's netns is still mounted in a node process's view")
	}
	// host-local gave the address back.
	ents, _ := os.ReadDir(filepath.Join(n[0].Dir, "ipam", "labnet"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "10.") {
			t.Errorf("host-local still holds %s", e.Name())
		}
	}
}

// statfsIn returns the file system type of path as the process pid sees it.
func statfsIn(t *testing.T, ctx context.Context, pid int, path string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(pid), "-m", "--", "stat", "-f", "-c", "%T", path).CombinedOutput()
	if err != nil {
		t.Fatalf("stat in pid %d: %v: %s", pid, err, out)
	}
	return strings.TrimSpace(string(out))
}

// mountedIn reports whether a mount point containing name is in pid's view.
func mountedIn(t *testing.T, pid int, name string) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), name)
}

// fakeWeft is a stand-in for the weft binary: it logs its arguments and
// sleeps, so the daemon management is tested without the real daemon.
func fakeWeft(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "weft")
	script := "#!/bin/sh\necho \"fake weft $*\"\necho \"to stderr\" >&2\nexec sleep 1000\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLabProcesses(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{WeftBinary: fakeWeft(t)})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 2)

	if err := n[0].StartDaemon("--peers", n[1].Addr.String()); err != nil {
		t.Fatal(err)
	}
	if !n[0].DaemonRunning() || n[0].DaemonPID() == 0 {
		t.Fatal("daemon not running")
	}
	if err := n[0].StartDaemon(); err == nil {
		t.Error("a second daemon started on the same node")
	}
	waitFor(t, 5*time.Second, func() error {
		if !strings.Contains(n[0].Log(), "to stderr") {
			return fmt.Errorf("log so far: %q", n[0].Log())
		}
		return nil
	})
	log := n[0].Log()
	for _, want := range []string{
		"fake weft daemon --node-name node1 --listen 172.30.0.1 --state-dir " + n[0].StateDir(),
		"--run-dir " + n[0].RunDir(), "--secret-file " + n[0].SecretFile(), "--peers 172.30.0.2",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	// The daemon runs in the node's netns.
	if !sameNetns(t, n[0].DaemonPID(), n[0].Netns) {
		t.Error("daemon is not in its node's netns")
	}
	secret, err := os.ReadFile(n[0].SecretFile())
	if err != nil || string(secret) != string(lab.Secret()) || len(secret) < 40 {
		t.Errorf("secret file %q (%v); lab secret %q", secret, err, lab.Secret())
	}

	first := n[0].DaemonPID()
	if err := n[0].RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	if n[0].DaemonPID() == first || !n[0].DaemonRunning() {
		t.Errorf("restart: pid %d -> %d, running %v", first, n[0].DaemonPID(), n[0].DaemonRunning())
	}
	if err := n[0].KillDaemon(); err != nil {
		t.Fatal(err)
	}
	if n[0].DaemonRunning() {
		t.Error("still running after kill -9")
	}
	if !strings.Contains(n[0].Log(), "signal: killed") {
		t.Errorf("log does not tell the kill:\n%s", n[0].Log())
	}
	if err := n[0].StopDaemon(); err != nil {
		t.Errorf("stop a stopped daemon: %v", err)
	}

	// Any long-running command, killed by Close at the latest.
	p, err := n[1].Spawn(ctx, "sh", "-c", "echo started; exec sleep 1000")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() error {
		if p.Output() != "started\n" {
			return fmt.Errorf("output %q", p.Output())
		}
		return nil
	})
	if !sameNetns(t, p.PID(), n[1].Netns) {
		t.Error("spawned process is not in its node's netns")
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Running() {
		t.Error("still running after Stop")
	}

	if _, err := n[1].Exec(ctx, "false"); err == nil {
		t.Error("Exec of false succeeded")
	}
	if out, err := n[1].Exec(ctx, "sh", "-c", "echo out; echo err >&2; exit 3"); err == nil || !strings.Contains(err.Error(), "err") || !strings.Contains(string(out), "out") {
		t.Errorf("Exec error %v, output %q; want both streams", err, out)
	}
}

func sameNetns(t *testing.T, pid int, netns string) bool {
	t.Helper()
	a, err1 := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid))
	b, err2 := os.Stat(netns)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat netns: %v %v", err1, err2)
	}
	return os.SameFile(a, b)
}

func waitFor(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLabOwnRunWireguard(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 2)
	hostBefore, _ := os.ReadDir("/run/wireguard")

	if _, err := n[0].Exec(ctx, "sh", "-c", "echo one > /var/run/wireguard/mark"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(n[0].WireGuardDir(), "mark")); err != nil || string(b) != "one\n" {
		t.Errorf("node1's /run/wireguard is not its dir: %q %v", b, err)
	}
	if out, err := n[1].Exec(ctx, "ls", "-A", "/run/wireguard"); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("node2 sees %q (%v) in /run/wireguard; want it empty", out, err)
	}
	if _, err := os.Stat("/run/wireguard/mark"); err == nil {
		t.Error("the host sees node1's /run/wireguard")
	}
	hostAfter, _ := os.ReadDir("/run/wireguard")
	if len(hostAfter) != len(hostBefore) {
		t.Errorf("host /run/wireguard changed: %d -> %d entries", len(hostBefore), len(hostAfter))
	}

	// wg show reads the UAPI socket of its own node: serve a fake one in
	// node2's directory.
	sock := filepath.Join(n[1].WireGuardDir(), "weft.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveFakeUAPI(ln)
	out, err := n[1].Exec(ctx, "wg", "show", "weft")
	if err != nil {
		t.Fatalf("wg show in node2: %v", err)
	}
	if !strings.Contains(string(out), "listening port: 6784") {
		t.Errorf("wg show in node2:\n%s", out)
	}
	if out, err := n[0].Exec(ctx, "wg", "show", "weft"); err == nil {
		t.Errorf("wg show in node1 found node2's device:\n%s", out)
	}
}

// serveFakeUAPI answers WireGuard's UAPI "get" like an idle device.
func serveFakeUAPI(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if line == "\n" {
					io.WriteString(c, "listen_port=6784\nerrno=0\n\n")
					return
				}
			}
		}()
	}
}

func TestLabCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	ctx := labCtx(t)
	lab, err := netlab.New(ctx, netlab.Config{WeftBinary: fakeWeft(t)})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			lab.Close()
		}
	})
	n := addNodes(t, lab, 0, 2)
	s, err := lab.AddSite(true)
	if err != nil {
		t.Fatal(err)
	}
	n = append(n, addNodes(t, lab, s, 1)...)
	if err := n[0].StartDaemon(); err != nil {
		t.Fatal(err)
	}
	p, err := n[2].Spawn(ctx, "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	// A process started behind the lab's back, in a node's netns.
	stray := exec.Command("ip", "netns", "exec", filepath.Base(n[1].Netns), "sleep", "1000")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan struct{})
	go func() { stray.Wait(); close(strayDone) }()
	if err := lab.Cut(n[0], n[1]); err != nil {
		t.Fatal(err)
	}
	c, err := lab.Capture(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	pids := []int{n[0].DaemonPID(), p.PID()}
	if got := ours(lab.Prefix, netnsList(t)); len(got) != 5 { // ul, rt, 3 nodes
		t.Errorf("netns of the lab: %v", got)
	}
	if countMounts(t, lab.Prefix) == 0 {
		t.Error("no mounts of the lab seen; the test cannot see what Close removes")
	}

	closed = true
	if err := lab.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := lab.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if got := ours(lab.Prefix, netnsList(t)); len(got) != 0 {
		t.Errorf("netns left: %v", got)
	}
	if m := countMounts(t, lab.Prefix); m != 0 {
		t.Errorf("%d mounts of the lab left", m)
	}
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil {
			t.Errorf("pid %d survived", pid)
		}
	}
	select {
	case <-strayDone:
	case <-time.After(5 * time.Second):
		t.Error("a process started in a node by hand survived Close")
	}
	if _, err := os.Stat(lab.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab dir left: %v", err)
	}
	if _, err := os.Stat(filepath.Join("/run/weftlab", lab.Prefix+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registry entry left: %v", err)
	}
}

// netnsList is what `ip netns list` shows.
func netnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func ours(prefix string, names []string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix+"-") {
			out = append(out, n)
		}
	}
	return out
}

// countMounts counts the mounts in this mount namespace that belong to the
// lab with prefix. Other tests may mount things meanwhile, so only ours
// count.
func countMounts(t *testing.T, prefix string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), prefix)
}

func TestLabCleanAll(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	ctx := labCtx(t)
	// A lab whose owner "died": its registry names a process that is gone.
	dead, err := netlab.New(ctx, netlab.Config{WeftBinary: fakeWeft(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Close() })
	live := netlab.NewForTest(t, netlab.Config{})
	dn := addNodes(t, dead, 0, 2)
	ln := addNodes(t, live, 0, 1)[0]
	if err := dn[0].StartDaemon(); err != nil {
		t.Fatal(err)
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	reg := filepath.Join("/run/weftlab", dead.Prefix+".json")
	if err := os.WriteFile(reg, []byte(fmt.Sprintf(`{"pid":%d,"start":1,"dir":%q}`, gone.Process.Pid, dead.Dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	daemonPID := dn[0].DaemonPID()

	if err := netlab.CleanAll(nil); err != nil {
		t.Fatalf("CleanAll: %v", err)
	}
	if got := ours(dead.Prefix, netnsList(t)); len(got) != 0 {
		t.Errorf("netns of the dead lab left: %v", got)
	}
	if _, err := os.Stat(dead.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir of the dead lab left: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", daemonPID)); err == nil {
		t.Error("the dead lab's daemon survived")
	}
	if countMounts(t, dead.Prefix) != 0 {
		t.Error("mounts of the dead lab left")
	}
	// The live lab is untouched.
	if got := ours(live.Prefix, netnsList(t)); len(got) != 2 {
		t.Errorf("live lab's netns: %v", got)
	}
	reach(t, ctx, ln.Netns, ln.Addr)
	if _, err := os.Stat(live.Dir); err != nil {
		t.Errorf("live lab's dir: %v", err)
	}
	// Closing what CleanAll removed is fine.
	if err := dead.Close(); err != nil {
		t.Errorf("close after CleanAll: %v", err)
	}
}

func TestLabCapture(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 2)
	s1, err := lab.AddSite(false)
	if err != nil {
		t.Fatal(err)
	}
	far := addNodes(t, lab, s1, 1)[0]
	c, err := lab.Capture(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := n[1].ListenPacket("udp", ":6784")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	conn, err := n[0].Dial(ctx, "udp", netip.AddrPortFrom(n[1].Addr, 6784).String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("secret-payload-xyz")); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	buf := make([]byte, 100)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := pc.ReadFrom(buf); err != nil {
		t.Fatal(err)
	}
	reach(t, ctx, n[0].Netns, far.Addr)
	pkts := c.Stop()

	var udp, icmpIn, icmpOut int
	for _, p := range pkts {
		switch {
		case p.Proto == netlab.ProtoUDP && p.DstPort == 6784 && p.Src == n[0].Addr && p.Dst == n[1].Addr:
			udp++
			if !p.Contains([]byte("secret-payload-xyz")) || string(p.Payload) != "secret-payload-xyz" {
				t.Errorf("udp payload %q", p.Payload)
			}
			if p.Iface != n[0].Port() {
				t.Errorf("udp seen on %s, want %s", p.Iface, n[0].Port())
			}
		case p.Proto == netlab.ProtoICMP && p.Src == n[0].Addr && p.Dst == far.Addr:
			if p.Iface == n[0].Port() {
				icmpOut++
			} else {
				icmpIn++ // out of the router onto site 1
			}
		}
	}
	if udp != 1 {
		t.Errorf("saw the UDP datagram %d times, want once; %d frames", udp, len(pkts))
	}
	if icmpOut == 0 || icmpIn == 0 {
		t.Errorf("echo across sites seen %d times on node1's port and %d on the far side; want both", icmpOut, icmpIn)
	}
	if t.Failed() {
		for _, p := range pkts {
			t.Logf("%s %s %s:%d > %s:%d", p.Iface, p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort)
		}
	}
	path := filepath.Join(t.TempDir(), "cap.pcap")
	f, _ := os.Create(path)
	if err := netlab.WritePcap(f, pkts); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("tcpdump", "-nr", path).CombinedOutput(); err == nil && !strings.Contains(string(out), "6784") {
		t.Errorf("tcpdump reads back:\n%s", out)
	}
}
