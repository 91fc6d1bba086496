//go:build linux

package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
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
