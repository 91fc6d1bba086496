package policy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podNS wires a "pod" namespace to the forwarding "node" namespace with a
// veth pair: pod eth0 = podIP/24, node side = gw/24.
func podNS(t *testing.T, node ns.NetNS, hostIf, podIP, gw string) ns.NetNS {
	t.Helper()
	pod := throwawayNetns(t)
	err := pod.Do(func(ns.NetNS) error {
		_, _, err := ip.SetupVethWithName("eth0", hostIf, 1500, "", node)
		if err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(podIP + "/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("pod address: %w", err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(gw)})
	})
	if err != nil {
		t.Fatalf("set up pod %s: %v", podIP, err)
	}
	err = node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(hostIf)
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(gw + "/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatalf("set up node side of %s: %v", podIP, err)
	}
	return pod
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

// connects reports whether a TCP connection from n to addr is established
// within a short deadline.
func connects(t *testing.T, n ns.NetNS, addr string) bool {
	t.Helper()
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
	return ok
}

// TestTrafficThroughNode proves drops and allowances with real packets: pod
// a (x, 10.32.1.5) talks to pod b (y, 10.32.2.6) through a forwarding node
// namespace that holds the rules.
func TestTrafficThroughNode(t *testing.T) {
	node := throwawayNetns(t)
	if err := node.Do(func(ns.NetNS) error { return ip.EnableIP4Forward() }); err != nil {
		t.Fatalf("enable forwarding: %v", err)
	}
	podA := podNS(t, node, "veth-a", "10.32.1.5", "10.32.1.1")
	podB := podNS(t, node, "veth-b", "10.32.2.6", "10.32.2.1")
	listen(t, podB, "10.32.2.6:80")
	listen(t, podB, "10.32.2.6:81")

	in := Input{
		NodeName:   testNode,
		Namespaces: []*corev1.Namespace{mkNS("x", nil), mkNS("y", nil)},
		Pods: []*corev1.Pod{
			mkPod("x", "a", "10.32.1.5", map[string]string{"app": "client"}),
			mkPod("y", "b", "10.32.2.6", map[string]string{"app": "server"}),
		},
	}
	a := NewApplier(Config{NetNS: int(node.Fd())})
	t.Cleanup(func() { _ = a.Remove() })

	check := func(phase string, want80, want81 bool) {
		t.Helper()
		rs := Compile(in)
		if err := a.Apply(rs); err != nil {
			t.Fatalf("%s: apply: %v", phase, err)
		}
		for _, c := range []struct {
			port uint16
			want bool
		}{{80, want80}, {81, want81}} {
			if ok, why := rs.Allows(tcp("10.32.1.5", "10.32.2.6", c.port)); ok != c.want {
				t.Fatalf("%s: the rule set says %v for port %d (%s), want %v", phase, ok, c.port, why, c.want)
			}
			if got := connects(t, podA, fmt.Sprintf("10.32.2.6:%d", c.port)); got != c.want {
				t.Errorf("%s: connect to port %d = %v, want %v", phase, c.port, got, c.want)
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

	// Swap to an egress policy on a: only TCP 81 out.
	in.Policies = []*networkingv1.NetworkPolicy{
		mkPolicy("x", "out-81", sel("app", "client"),
			types(networkingv1.PolicyTypeEgress),
			egressRule(peers(blockPeer("10.32.0.0/16")), port(corev1.ProtocolTCP, 81))),
		mkPolicy("y", "all-in", &metav1.LabelSelector{}, ingressRule(nil)),
	}
	check("egress 81 only", false, true)

	if err := a.Remove(); err != nil {
		t.Fatalf("remove: %v", err)
	}
	for _, port := range []string{"80", "81"} {
		if !connects(t, podA, "10.32.2.6:"+port) {
			t.Errorf("after Remove: port %s is still blocked", port)
		}
	}
}
