package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/netlab"
	"github.com/weftnet/weft/tests/kubelab"
)

// The pod ranges of the dual-stack tests.
var (
	dsPodCIDR4 = netip.MustParsePrefix("10.40.0.0/16")
	dsPodCIDR6 = netip.MustParsePrefix("fd10:40::/48")
)

// dsPod is one pod of a dual-stack test.
type dsPod struct {
	*netlab.Pod
	ip4, ip6 netip.Addr
}

// TestDualStack runs three nodes with an IPv4 and an IPv6 pod range
// (--pod-cidr 10.40.0.0/16,fd10:40::/48) against a real kube-apiserver:
// each node gets an IPv6 tunnel address its peers route (and its Node
// shows), every pod gets
// one address of each family and reaches the pods of every node over both
// (ping and a TCP connection, which sees the client's own address: no NAT
// between pods), the underlay between the nodes carries only WireGuard and
// gossip (no pod address or payload in clear), and NetworkPolicies with
// an IPv6 ipBlock (with an except) and with a pod selector allow and deny
// as written in both families.
func TestDualStack(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cp, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	kapi := startKubelabHelper(t, ctx, cp.Netns, cp.Addr)
	nodes, err := lab.AddNodes(0, 3)
	if err != nil {
		t.Fatal(err)
	}
	applyObjects(t, ctx, kapi, readManifest(t, manifestPath))
	for _, n := range nodes {
		if err := registerNode(ctx, kapi.Clientset(), n.Name, n.Addr); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"--kubeconfig", kapi.saKubeconfig, "--secret-file", "", "--wg-mode", "userspace",
		"--metrics-addr", "", "--log-level", "info", "--pod-cidr", dsPodCIDR4.String() + "," + dsPodCIDR6.String()}
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return args })
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s daemon log:\n%s", n.Name, n.LogTail(40))
			}
		}
	})
	tunnel := waitMesh(t, ctx, nodes)
	tunnel6 := waitTunnel6(t, ctx, nodes)
	for _, n := range nodes {
		if !dsPodCIDR4.Contains(tunnel[n.Name]) {
			t.Errorf("%s: tunnel address %s outside %s", n.Name, tunnel[n.Name], dsPodCIDR4)
		}
	}

	client := kapi.Clientset()
	// Each node publishes its IPv6 tunnel address on its Node.
	poll(t, ctx, func() error {
		for _, n := range nodes {
			node, err := client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got := node.Annotations[kube.AnnotationTunnelAddr6]; got != tunnel6[n.Name].String() {
				return fmt.Errorf("Node %s: %s is %q, want %s", n.Name, kube.AnnotationTunnelAddr6, got, tunnel6[n.Name])
			}
		}
		return nil
	})
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ds"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []*dsPod
	for i, n := range nodes {
		pods = append(pods, startDSPod(t, ctx, client, n, fmt.Sprintf("p%d", i)))
	}
	seen := map[netip.Addr]string{}
	for _, p := range pods {
		if !dsPodCIDR4.Contains(p.ip4) || !dsPodCIDR6.Contains(p.ip6) {
			t.Fatalf("pod %s has addresses %v, want one in %s and one in %s", p.Name, p.IPs(), dsPodCIDR4, dsPodCIDR6)
		}
		for _, a := range []netip.Addr{p.ip4, p.ip6} {
			if other, dup := seen[a]; dup {
				t.Errorf("address %s given to both %s and %s", a, other, p.Name)
			}
			seen[a] = p.Name
		}
	}

	// Every pod reaches every other pod, and every node's IPv6 tunnel
	// address, over both families.
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			poll(t, ctx, func() error {
				if _, err := a.Ping(ctx, b.ip4); err != nil {
					return err
				}
				return ping6(ctx, a.Pod, b.ip6)
			})
			for _, dst := range []netip.Addr{b.ip4, b.ip6} {
				poll(t, ctx, func() error {
					got, err := dsTCP(ctx, a.Pod, dst)
					if err == nil && got != dsSource(a, dst) {
						return fmt.Errorf("TCP %s -> %s: the server saw %s, want %s (no NAT between pods)", a.Name, dst, got, dsSource(a, dst))
					}
					return err
				})
			}
		}
		for _, n := range nodes {
			if err := ping6(ctx, a.Pod, tunnel6[n.Name]); err != nil {
				t.Errorf("pod %s cannot reach %s at its IPv6 tunnel address: %v", a.Name, n.Name, err)
			}
		}
	}

	checkDSUnderlay(t, ctx, lab, cp.Addr, pods, dsPodCIDR4, dsPodCIDR6)
	checkDSPolicy(t, ctx, client, pods)
}

// waitTunnel6 waits until every node has an IPv6 tunnel address in the
// IPv6 pod range that every peer routes to it, and returns them.
func waitTunnel6(t *testing.T, ctx context.Context, nodes []*netlab.Node) map[string]netip.Addr {
	t.Helper()
	addrs := map[string]netip.Addr{}
	poll(t, ctx, func() error {
		for _, n := range nodes {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			a, err := netip.ParseAddr(st.TunnelAddr6)
			if err != nil || !dsPodCIDR6.Contains(a) {
				return fmt.Errorf("%s: IPv6 tunnel address %q, want one in %s", n.Name, st.TunnelAddr6, dsPodCIDR6)
			}
			addrs[n.Name] = a
		}
		for _, n := range nodes {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if p.TunnelAddr6 != addrs[p.Name].String() || !routes(p.AllowedIPs, p.TunnelAddr6) {
					return fmt.Errorf("%s: peer %s announces IPv6 tunnel address %q (want %s), allowed IPs %v",
						n.Name, p.Name, p.TunnelAddr6, addrs[p.Name], p.AllowedIPs)
				}
			}
		}
		return nil
	})
	return addrs
}

// startDSPod plays the kubelet for one pod: the Pod object bound to its
// node, CNI ADD, both addresses in the Pod's status (as the kubelet writes
// status.podIPs from the CNI result), and a TCP server on port 80 that
// answers with the address the client connected from.
func startDSPod(t *testing.T, ctx context.Context, client kubernetes.Interface, n *netlab.Node, name string) *dsPod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ds", Name: name, Labels: map[string]string{"pod": name}},
		Spec:       corev1.PodSpec{NodeName: n.Name, Containers: []corev1.Container{{Name: "pause", Image: kubelab.PauseImage}}},
	}
	pod, err := client.CoreV1().Pods("ds").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lp, err := n.AddPod(ctx, netlab.PodConfig{Namespace: "ds", Name: name})
	if err != nil {
		t.Fatalf("CNI ADD of %s on %s: %v\ndaemon log:\n%s", name, n.Name, err, n.LogTail(30))
	}
	p := &dsPod{Pod: lp, ip4: lp.IP(), ip6: lp.IP6()}
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		PodIP:     p.ip4.String(),
		PodIPs:    []corev1.PodIP{{IP: p.ip4.String()}, {IP: p.ip6.String()}},
		HostIP:    n.Addr.String(),
		HostIPs:   []corev1.HostIP{{IP: n.Addr.String()}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	if _, err := client.CoreV1().Pods("ds").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	serveSource(t, lp)
	return p
}

// serveSource runs a TCP server on port 80 in pod p until the test ends:
// it answers each connection with the address the client came from.
func serveSource(t *testing.T, p *netlab.Pod) {
	t.Helper()
	ln, err := netlab.Listen(p.Netns, "tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "%s\n", ap.Addr().Unmap())
			c.Close()
		}
	}()
}

// dsSource is the address pod a sends from to dst.
func dsSource(a *dsPod, dst netip.Addr) string {
	if dst.Is4() {
		return a.ip4.String()
	}
	return a.ip6.String()
}

// dsTCP connects from pod p to dst port 80 and returns what the server
// says (the address it saw the connection come from).
func dsTCP(ctx context.Context, p *netlab.Pod, dst netip.Addr) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := p.Dial(dctx, "tcp", netip.AddrPortFrom(dst, 80).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", dst, err)
	}
	return strings.TrimSpace(line), nil
}

// ping6 sends one ICMPv6 echo from pod p to dst with the ping tool.
func ping6(ctx context.Context, p *netlab.Pod, dst netip.Addr) error {
	_, err := p.Exec(ctx, "ping", "-6", "-c", "1", "-W", "1", "-q", dst.String())
	return err
}

// checkDSUnderlay captures the underlay while pods talk over IPv6 and
// IPv4 across nodes: between the nodes only WireGuard and gossip pass,
// and no pod address or payload crosses in clear (traffic to the API
// server at api is left aside, but must not carry pod traffic either).
func checkDSUnderlay(t *testing.T, ctx context.Context, lab *netlab.Lab, api netip.Addr, pods []*dsPod, podCIDRs ...netip.Prefix) {
	t.Helper()
	pattern := []byte{0xde, 0xad, 0xbe, 0xef, 0x57, 0xef, 0x66, 0x06}
	capture, err := lab.Capture(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, dst := range pods[1:] {
		out, err := pods[0].Exec(ctx, "ping", "-6", "-c", "3", "-i", "0.2", "-s", "200", "-p", hex.EncodeToString(pattern), dst.ip6.String())
		if err != nil {
			t.Fatalf("IPv6 ping with a pattern to %s: %v\n%s", dst.Name, err, out)
		}
		for _, a := range []netip.Addr{dst.ip4, dst.ip6} {
			if !a.IsValid() {
				continue // IPv6 only
			}
			if _, err := dsTCP(ctx, pods[0].Pod, a); err != nil {
				t.Errorf("TCP to %s during the capture: %v", a, err)
			}
		}
	}
	packets := capture.Stop()
	wg := 0
	for _, p := range packets {
		if p.Contains(pattern) {
			t.Errorf("the ping payload crossed the underlay in clear: %s %s:%d -> %s:%d", p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort)
		}
		for _, pod := range pods {
			for _, a := range []netip.Addr{pod.ip4, pod.ip6} {
				if a.IsValid() && bytes.Contains(p.Data, a.AsSlice()) {
					t.Errorf("pod address %s crossed the underlay in clear: %s %s -> %s", a, p.Proto, p.Src, p.Dst)
				}
			}
		}
		for _, r := range podCIDRs {
			if r.Contains(p.Src) || r.Contains(p.Dst) {
				t.Errorf("a packet with a pod-range address on the underlay: %s -> %s", p.Src, p.Dst)
			}
		}
		switch {
		case api.IsValid() && (p.Src == api || p.Dst == api):
		case p.Proto == netlab.ProtoARP:
		case p.Proto == netlab.ProtoUDP && (p.DstPort == 6784 || p.SrcPort == 6784):
			wg++
		case (p.Proto == netlab.ProtoUDP || p.Proto == netlab.ProtoTCP) && (p.DstPort == 6783 || p.SrcPort == 6783):
		default:
			t.Errorf("unexpected packet on the underlay: %s %s:%d -> %s:%d", p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort)
		}
	}
	if wg < 12 {
		t.Errorf("saw %d WireGuard packets for 6 pings, TCP connections and their replies", wg)
	}
	t.Logf("%d frames captured, %d WireGuard", len(packets), wg)
}

// checkDSPolicy applies two NetworkPolicies and waits until TCP between
// the pods passes and fails as they say, in both families:
//   - p2 admits TCP 80 only from the IPv6 range except p1's IPv6 address:
//     p0 over IPv6 passes; p1 over IPv6 and p0 over IPv4 do not;
//   - p1 admits only pod p0 (a pod selector, so both of p0's addresses):
//     p0 passes over both families, p2 over neither.
func checkDSPolicy(t *testing.T, ctx context.Context, client kubernetes.Interface, pods []*dsPod) {
	t.Helper()
	p0, p1, p2 := pods[0], pods[1], pods[2]
	tcp80 := ports(portNum(corev1.ProtocolTCP, 80))
	pols := []*networkingv1.NetworkPolicy{
		netpol("ds", "p2-from-ipv6-block", podIs("p2"), ingressOnly,
			ingressRules(rule(tcp80, ipPeer(dsPodCIDR6.String(), netip.PrefixFrom(p1.ip6, 128).String()))), nil),
		netpol("ds", "p1-from-p0", podIs("p1"), ingressOnly,
			ingressRules(rule(nil, peer(labelsOf("pod", "p0"), nil))), nil),
	}
	for _, pol := range pols {
		if _, err := client.NetworkingV1().NetworkPolicies("ds").Create(ctx, pol, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		from *dsPod
		to   netip.Addr
		pass bool
	}{
		{p0, p2.ip6, true},
		{p1, p2.ip6, false},
		{p0, p2.ip4, false},
		{p1, p2.ip4, false},
		{p0, p1.ip4, true},
		{p0, p1.ip6, true},
		{p2, p1.ip4, false},
		{p2, p1.ip6, false},
	}
	poll(t, ctx, func() error {
		var wrong []string
		for _, c := range cases {
			_, err := dsTCP(ctx, c.from.Pod, c.to)
			if (err == nil) != c.pass {
				wrong = append(wrong, fmt.Sprintf("%s -> %s: passed=%v, want %v", c.from.Name, c.to, err == nil, c.pass))
			}
		}
		if len(wrong) > 0 {
			return fmt.Errorf("policies not in force as written: %s", strings.Join(wrong, "; "))
		}
		return nil
	})
}

// TestIPv6Only runs three nodes with only an IPv6 pod range (--pod-cidr
// fd10:41::/48, no Kubernetes): the nodes' tunnel addresses and the pods'
// addresses are IPv6, pods on every node reach each other (ping and TCP,
// without NAT), and the underlay between the nodes (IPv4) carries only
// WireGuard and gossip.
func TestIPv6Only(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pod6 := netip.MustParsePrefix("fd10:41::/48")
	nodes, err := lab.AddNodes(0, 3)
	if err != nil {
		t.Fatal(err)
	}
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return seedArgs(nodes[0], nodes, "--pod-cidr", pod6.String()) })
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s daemon log:\n%s", n.Name, n.LogTail(40))
			}
		}
	})
	tunnel := waitMesh(t, ctx, nodes)
	for _, n := range nodes {
		if !pod6.Contains(tunnel[n.Name]) {
			t.Errorf("%s: tunnel address %s outside %s", n.Name, tunnel[n.Name], pod6)
		}
	}
	var pods []*dsPod
	for _, lp := range addPods(t, ctx, nodes, 1) {
		ips := lp.IPs()
		if len(ips) != 1 || !pod6.Contains(ips[0]) {
			t.Fatalf("pod %s has addresses %v, want one in %s", lp.Name, ips, pod6)
		}
		serveSource(t, lp)
		pods = append(pods, &dsPod{Pod: lp, ip6: ips[0]})
	}
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			poll(t, ctx, func() error {
				if err := ping6(ctx, a.Pod, b.ip6); err != nil {
					return err
				}
				got, err := dsTCP(ctx, a.Pod, b.ip6)
				if err == nil && got != a.ip6.String() {
					return fmt.Errorf("TCP %s -> %s: the server saw %s, want %s (no NAT between pods)", a.Name, b.ip6, got, a.ip6)
				}
				return err
			})
		}
		for _, n := range nodes {
			if err := ping6(ctx, a.Pod, tunnel[n.Name]); err != nil {
				t.Errorf("pod %s cannot reach %s at its tunnel address %s: %v", a.Name, n.Name, tunnel[n.Name], err)
			}
		}
	}
	checkDSUnderlay(t, ctx, lab, netip.Addr{}, pods, pod6)
}
