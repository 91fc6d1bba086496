package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// podNS wires a "pod" namespace to the forwarding "node" namespace with a
// veth pair; each pair of nets is the pod's address and the node side's
// (the pod's gateway), e.g. {"10.32.1.5/24", "10.32.1.1/24"}.
func podNS(t *testing.T, node ns.NetNS, hostIf string, nets ...[2]string) ns.NetNS {
	t.Helper()
	pod := throwawayNetns(t)
	addrAdd := func(l netlink.Link, cidr string) error {
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			return err
		}
		a.Flags = unix.IFA_F_NODAD // no duplicate address detection: usable at once
		return netlink.AddrAdd(l, a)
	}
	err := pod.Do(func(ns.NetNS) error {
		if err := noDAD(); err != nil {
			return err
		}
		if _, _, err := ip.SetupVethWithName("eth0", hostIf, 1500, "", node); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		for _, n := range nets {
			if err := addrAdd(l, n[0]); err != nil {
				return fmt.Errorf("pod address %s: %w", n[0], err)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		for _, n := range nets {
			gw, _, _ := net.ParseCIDR(n[1])
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw}); err != nil {
				return fmt.Errorf("default route via %s: %w", gw, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("set up pod %v: %v", nets, err)
	}
	err = node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(hostIf)
		if err != nil {
			return err
		}
		for _, n := range nets {
			if err := addrAdd(l, n[1]); err != nil {
				return err
			}
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatalf("set up node side of %v: %v", nets, err)
	}
	return pod
}

// noDAD turns IPv6 duplicate address detection off in the calling thread's
// namespace, so that link-local addresses (which neighbor discovery needs)
// are usable at once.
func noDAD() error {
	for _, c := range []string{"all", "default"} {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+c+"/accept_dad", []byte("0"), 0o644); err != nil {
			return fmt.Errorf("turn off DAD: %w", err)
		}
	}
	return nil
}

// listen serves TCP on addr inside n until the test ends.
func listen(t *testing.T, n ns.NetNS, addr string) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// connects reports whether a TCP connection from n to addr is established.
// When want is true it retries for up to 10 s (a busy machine may be slow to
// resolve neighbors); when false one attempt with a short deadline decides.
func connects(t *testing.T, n ns.NetNS, addr string, want bool) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := false
		err := n.Do(func(ns.NetNS) error {
			c, err := (&net.Dialer{Timeout: 700 * time.Millisecond}).Dial("tcp", addr)
			if err == nil {
				ok = true
				c.Close()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		})
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		if ok || !want || time.Now().After(deadline) {
			return ok
		}
	}
}

// TestTrafficThroughNode proves drops and allowances with real packets: pod
// a (x, 10.32.1.5) talks to pod b (y, 10.32.2.6) through a forwarding node
// namespace that holds the rules.
func TestTrafficThroughNode(t *testing.T) {
	node := throwawayNetns(t)
	if err := node.Do(func(ns.NetNS) error { return errors.Join(noDAD(), ip.EnableIP4Forward(), ip.EnableIP6Forward()) }); err != nil {
		t.Fatalf("enable forwarding: %v", err)
	}
	podA := podNS(t, node, "veth-a", [2]string{"10.32.1.5/24", "10.32.1.1/24"}, [2]string{"fd00:1::5/64", "fd00:1::1/64"})
	podB := podNS(t, node, "veth-b", [2]string{"10.32.2.6/24", "10.32.2.1/24"}, [2]string{"fd00:2::6/64", "fd00:2::1/64"})
	for _, a := range []string{"10.32.2.6:80", "10.32.2.6:81", "[fd00:2::6]:80", "[fd00:2::6]:81"} {
		listen(t, podB, a)
	}

	in := Input{
		NodeName:   testNode,
		Namespaces: []*corev1.Namespace{mkNS("x", nil), mkNS("y", nil)},
		Pods: []*corev1.Pod{
			mkPod("x", "a", "10.32.1.5", map[string]string{"app": "client"}),
			mkPod("y", "b", "10.32.2.6", map[string]string{"app": "server"}),
		},
	}
	in.Pods[0].Status.PodIPs = append(in.Pods[0].Status.PodIPs, corev1.PodIP{IP: "fd00:1::5"})
	in.Pods[1].Status.PodIPs = append(in.Pods[1].Status.PodIPs, corev1.PodIP{IP: "fd00:2::6"})
	a := NewApplier(Config{NetNS: int(node.Fd())})
	t.Cleanup(func() { _ = a.Remove() })

	// The drop log reads the samples of the applier's NFLOG rules and
	// explains them with the rule set in force.
	var current atomic.Pointer[RuleSet]
	dl := NewDropLog(DropLogConfig{NetNS: int(node.Fd()), Explain: func(p Packet) string {
		if rs := current.Load(); rs != nil {
			_, why := rs.Allows(p)
			return why.String()
		}
		return ""
	}})
	ctx, cancel := context.WithCancel(context.Background())
	dlDone := make(chan error, 1)
	go func() { dlDone <- dl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-dlDone; err != nil {
			t.Errorf("drop log: %v", err)
		}
	})

	check := func(phase string, want80, want81 bool) {
		t.Helper()
		rs := Compile(in)
		current.Store(&rs)
		if err := a.Apply(rs); err != nil {
			t.Fatalf("%s: apply: %v", phase, err)
		}
		for _, c := range []struct {
			src, dst string
			port     uint16
			want     bool
		}{
			{"10.32.1.5", "10.32.2.6", 80, want80}, {"10.32.1.5", "10.32.2.6", 81, want81},
			{"fd00:1::5", "fd00:2::6", 80, want80}, {"fd00:1::5", "fd00:2::6", 81, want81},
		} {
			if ok, why := rs.Allows(tcp(c.src, c.dst, c.port)); ok != c.want {
				t.Fatalf("%s: the rule set says %v for %s port %d (%s), want %v", phase, ok, c.dst, c.port, why, c.want)
			}
			dst := net.JoinHostPort(c.dst, fmt.Sprint(c.port))
			if got := connects(t, podA, dst, c.want); got != c.want {
				t.Errorf("%s: connect to %s = %v, want %v", phase, dst, got, c.want)
			}
		}
	}

	check("no policy", true, true)

	// b accepts TCP 80 from x/app=client only, and may send nothing itself:
	// its replies pass as established traffic.
	in.Policies = []*networkingv1.NetworkPolicy{
		mkPolicy("y", "allow-80", sel("app", "server"),
			types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress),
			ingressRule(peers(nsPodPeer(sel(namespaceNameLabel, "x"), sel("app", "client"))), port("", 80))),
	}
	check("ingress 80 only", true, false)
	drops, err := a.Drops()
	if err != nil {
		t.Fatal(err)
	}
	var in81 uint64
	for _, d := range drops {
		if d.Name == "b" && d.Direction == Ingress {
			in81 = d.Packets
		}
	}
	if in81 == 0 {
		t.Errorf("no drop counted for the ingress of y/b: %+v", drops)
	}
	// And sampled with its reason.
	deadline := time.Now().Add(5 * time.Second)
	var logged *Drop
	for logged == nil && time.Now().Before(deadline) {
		for _, d := range dl.Recent() {
			if d.Pod == "y/b" && d.Direction == Ingress && d.Port == 81 && d.Proto == "tcp" {
				logged = &d
				break
			}
		}
		if logged == nil {
			time.Sleep(50 * time.Millisecond) // polling the drop log
		}
	}
	if logged == nil {
		t.Fatalf("no sampled drop of y/b port 81 in the drop log: %+v", dl.Recent())
	}
	if !strings.Contains(logged.Reason, "default deny") || !strings.Contains(logged.Reason, "allow-80") {
		t.Errorf("drop reason %q should name the default deny and the policy in force", logged.Reason)
	}
	if logged.Src != netip.MustParseAddr("10.32.1.5") && logged.Src != netip.MustParseAddr("fd00:1::5") {
		t.Errorf("drop source %s is not pod x/a", logged.Src)
	}

	// Swap to an egress policy on a: only TCP 81 out.
	in.Policies = []*networkingv1.NetworkPolicy{
		mkPolicy("x", "out-81", sel("app", "client"),
			types(networkingv1.PolicyTypeEgress),
			egressRule(peers(blockPeer("10.32.0.0/16"), blockPeer("fd00::/16")), port(corev1.ProtocolTCP, 81))),
		mkPolicy("y", "all-in", &metav1.LabelSelector{}, ingressRule(nil)),
	}
	check("egress 81 only", false, true)

	// ClusterNetworkPolicy tiers. An Admin Deny beats the NetworkPolicy
	// that allows all ingress, and the drop log names its rule.
	const (
		accept = cnp.ClusterNetworkPolicyRuleActionAccept
		deny   = cnp.ClusterNetworkPolicyRuleActionDeny
		pass   = cnp.ClusterNetworkPolicyRuleActionPass
	)
	in.Policies = []*networkingv1.NetworkPolicy{mkPolicy("y", "all-in", &metav1.LabelSelector{}, ingressRule(nil))}
	in.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIngress(mkCNP("guard", cnp.AdminTier, 10, "y"), "no-81", deny, "x", 81, 81)}
	check("admin deny beats allow", true, false)
	waitDrop(t, dl, "y/b", 81, `Admin ClusterNetworkPolicy guard (priority 10) ingress[0] "no-81"`)

	// An Admin Accept beats a NetworkPolicy default deny.
	in.Policies = []*networkingv1.NetworkPolicy{mkPolicy("y", "deny-in", &metav1.LabelSelector{}, types(networkingv1.PolicyTypeIngress))}
	in.ClusterPolicies = []*cnp.ClusterNetworkPolicy{withIngress(mkCNP("open", cnp.AdminTier, 5, "y"), "http", accept, "x", 80, 80)}
	check("admin accept beats deny", true, false)

	// Pass (priority 1) hands 80 to the next tiers before the Deny of
	// priority 2 sees it; with no NetworkPolicy and no Baseline it passes.
	in.Policies = nil
	in.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		withIngress(mkCNP("z-pass", cnp.AdminTier, 1, "y"), "", pass, "x", 80, 80),
		withIngress(mkCNP("a-deny", cnp.AdminTier, 2, "y"), "", deny, "x", 0, 0),
	}
	check("pass then deny", true, false)
	// A Baseline Deny catches what was passed ...
	in.ClusterPolicies = append(in.ClusterPolicies, withIngress(mkCNP("base", cnp.BaselineTier, 1, "y"), "", deny, "x", 0, 0))
	check("baseline deny", false, false)
	waitDrop(t, dl, "y/b", 80, "Baseline ClusterNetworkPolicy base (priority 1) ingress[0]")
	// ... unless a NetworkPolicy selects the pod.
	in.Policies = []*networkingv1.NetworkPolicy{mkPolicy("y", "all-in", &metav1.LabelSelector{}, ingressRule(nil))}
	check("networkpolicy overrides baseline", true, false)
	in.Policies, in.ClusterPolicies = nil, nil
	check("no policy again", true, true)

	if err := a.Remove(); err != nil {
		t.Fatalf("remove: %v", err)
	}
	for _, dst := range []string{"10.32.2.6:80", "10.32.2.6:81", "[fd00:2::6]:80", "[fd00:2::6]:81"} {
		if !connects(t, podA, dst, true) {
			t.Errorf("after Remove: %s is still blocked", dst)
		}
	}
}

// waitDrop waits for a sampled drop of pod's ingress to port whose reason
// holds want.
func waitDrop(t *testing.T, dl *DropLog, pod string, port uint16, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, d := range dl.Recent() {
			if d.Pod == pod && d.Port == port && strings.Contains(d.Reason, want) {
				return
			}
		}
		time.Sleep(50 * time.Millisecond) // polling the drop log
	}
	t.Fatalf("no sampled drop of %s port %d with reason %q: %+v", pod, port, want, dl.Recent())
}
