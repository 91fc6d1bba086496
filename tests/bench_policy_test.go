package tests

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftnet/weft/netlab"
	"github.com/weftnet/weft/policy"
)

// The NetworkPolicy benchmark: pod-to-pod TCP throughput (iperf3, 1 and 4
// streams) from a client pod on node1 to a server pod on node2 over weft,
// with no policy in node2's nftables table and with the rule set compiled
// from 1,000 policies over 5,000 pods, in one lab. The daemons run without
// Kubernetes, so the benchmark compiles and applies the rules itself with a
// policy.Applier opened on node2's network namespace. The server pod is
// selected by 20 policies (so its ingress goes through the allow sets), one
// of which lets the client in on iperf3's port; each round measures both
// cases, in an order that alternates, and the medians and the ratio are
// reported; -benchtime Nx is N rounds.
//
//	sudo go test -run '^$' -bench PolicyThroughput -benchtime 3x ./tests/

// benchIperfPort is iperf3's default port, the one the client is allowed to.
const benchIperfPort = 5201

// BenchmarkPolicyThroughput measures what 1,000 NetworkPolicies cost pod
// traffic, as described above.
func BenchmarkPolicyThroughput(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: runs weft in network namespaces and programs nftables")
	}
	for _, tool := range []string{"iperf3", "ping", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("needs %s (apt-get install iperf3 iputils-ping iproute2)", tool)
		}
	}
	weft := needWeft(b)
	lab := netlab.NewForTest(b, netlab.Config{WeftBinary: weft})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		b.Fatal(err)
	}
	startWeft(b, ctx, nodes)
	pods := benchPods(b, ctx, nodes)
	client, server := pods[0], pods[1]
	if _, err := server.Spawn(ctx, "iperf3", "-s", "-p", fmt.Sprint(benchIperfPort)); err != nil {
		b.Fatal(err)
	}
	path := benchPath{name: "pods", run: client.Exec, dst: server.IP(),
		pids: []int{nodes[0].DaemonPID(), nodes[1].DaemonPID()}}
	waitReach(b, ctx, path)

	in := benchPolicyInput(nodes[1], client, server)
	rs := policy.Compile(in)
	if len(rs.Pods) == 0 {
		b.Fatalf("the rule set isolates no pod on %s; warnings: %v", nodes[1].Name, rs.Warnings)
	}
	nsFile, err := os.Open(nodes[1].Netns)
	if err != nil {
		b.Fatal(err)
	}
	defer nsFile.Close()
	applier := policy.NewApplier(policy.Config{NetNS: int(nsFile.Fd()), NoLog: true})
	b.Cleanup(func() { _ = applier.Remove() })

	// Check once that the rules are in force: the client still reaches
	// iperf3's port, and a port no policy allows is dropped (a timeout,
	// where without policies the server's kernel refuses at once).
	denied := netip.AddrPortFrom(server.IP(), benchIperfPort+1)
	if err := benchDial(ctx, client, denied); !benchRefused(err) {
		b.Fatalf("without policies, a dial to %s: %v (want connection refused)", denied, err)
	}
	start := time.Now()
	if err := applier.Apply(rs); err != nil {
		b.Fatal(err)
	}
	b.Logf("applied %d policies over %d pods (%d isolated on %s) in %v, %d writes",
		len(in.Policies), len(in.Pods), len(rs.Pods), nodes[1].Name, time.Since(start).Round(time.Millisecond), applier.Writes())
	if err := benchDial(ctx, client, denied); !benchTimedOut(err) {
		b.Fatalf("with policies, a dial to %s: %v (want a timeout: dropped)", denied, err)
	}
	if err := benchDial(ctx, client, netip.AddrPortFrom(server.IP(), benchIperfPort)); err != nil {
		b.Fatalf("with policies, the client cannot reach iperf3: %v", err)
	}
	if err := applier.Remove(); err != nil {
		b.Fatal(err)
	}

	for _, m := range []struct {
		name    string
		streams int
	}{{"tcp-1stream", 1}, {"tcp-4streams", 4}} {
		b.Run(m.name, func(b *testing.B) {
			values := map[string][]float64{}
			for round := 0; round < b.N; round++ {
				got := map[string]float64{}
				for i := range 2 {
					withPolicies := (i+round)%2 == 1
					name := "none"
					if withPolicies {
						name = "1000policies"
						if err := applier.Apply(rs); err != nil {
							b.Fatal(err)
						}
					}
					got[name] = iperf(b, ctx, path, m.streams).value
					if withPolicies {
						if err := applier.Remove(); err != nil {
							b.Fatal(err)
						}
					}
					values["Gbit/s-"+name] = append(values["Gbit/s-"+name], got[name])
				}
				ratio := got["1000policies"] / got["none"]
				values["x-1000policies-vs-none"] = append(values["x-1000policies-vs-none"], ratio)
				b.Logf("round %d, Gbit/s: none %.3g, 1000 policies %.3g (x%.3f)", round+1, got["none"], got["1000policies"], ratio)
			}
			for unit, v := range values {
				b.ReportMetric(median(v), unit)
			}
		})
	}
}

// benchDial opens a TCP connection from pod to dst with a 2 s timeout and
// closes it.
func benchDial(ctx context.Context, pod *netlab.Pod, dst netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := pod.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return err
	}
	return c.Close()
}

func benchRefused(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection refused")
}

func benchTimedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// benchPolicyInput is node2's view of a big cluster: the two real pods in
// namespace default, 5,000 synthetic pods in 50 namespaces on 50 nodes (100
// of them on node2, with addresses in 10.46.0.0/16 that no real pod has),
// and 1,000 policies: 20 in default that select the server (one lets the
// client in on iperf3's port, the others allow other peers and ports), and
// 20 in each of 49 other namespaces mixing pod, namespace and ipBlock peers,
// port ranges and named ports.
func benchPolicyInput(node *netlab.Node, client, server *netlab.Pod) policy.Input {
	const namespaces, podsPerNS, nodeCount = 50, 100, 50
	in := policy.Input{NodeName: node.Name, NodeAddrs: []netip.Addr{node.Addr}}
	in.Namespaces = append(in.Namespaces, benchNS("default", map[string]string{"team": "t0"}))
	in.Pods = append(in.Pods,
		benchPod("default", client.Name, client.Node.Name, client.IP().String(), map[string]string{"app": "bench-client", "tier": "web"}),
		benchPod("default", server.Name, server.Node.Name, server.IP().String(), map[string]string{"app": "bench-server", "tier": "db"}))
	for n := range namespaces {
		ns := fmt.Sprintf("ns-%d", n)
		in.Namespaces = append(in.Namespaces, benchNS(ns, map[string]string{"team": fmt.Sprintf("t%d", n%5)}))
		for p := range podsPerNS {
			i := n*podsPerNS + p
			nodeName := fmt.Sprintf("node-%d", (p+n)%nodeCount)
			if (p+n)%nodeCount == 0 {
				nodeName = node.Name
			}
			pod := benchPod(ns, fmt.Sprintf("pod-%d", p), nodeName, fmt.Sprintf("10.46.%d.%d", i/250, i%250+1),
				map[string]string{"app": fmt.Sprintf("app-%d", p%10), "tier": []string{"web", "db"}[(p/10)%2]})
			pod.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: int32(8000 + p%3), Protocol: corev1.ProtocolTCP}}}}
			in.Pods = append(in.Pods, pod)
		}
	}
	serverSel := benchSel("app", "bench-server")
	in.Policies = append(in.Policies, benchPolicy("default", "allow-client", serverSel,
		benchIngress(benchPodPeer(benchSel("app", "bench-client")), benchTCPPort(benchIperfPort))))
	for k := 1; k < 20; k++ {
		var rule networkingv1.NetworkPolicyIngressRule
		switch k % 3 {
		case 0:
			rule = benchIngress(networkingv1.NetworkPolicyPeer{NamespaceSelector: benchSel("team", fmt.Sprintf("t%d", k%5)),
				PodSelector: benchSel("tier", "web")}, benchTCPPort(int32(6000+k)))
		case 1:
			rule = benchIngress(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8",
				Except: []string{fmt.Sprintf("10.46.%d.0/24", k)}}}, benchTCPRange(9000, 9100))
		default:
			rule = benchIngress(networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}}, benchTCPPort(int32(7000+k)))
		}
		in.Policies = append(in.Policies, benchPolicy("default", fmt.Sprintf("p%d", k), serverSel, rule))
	}
	for n := 1; n < namespaces; n++ {
		ns := fmt.Sprintf("ns-%d", n)
		for k := range 20 {
			app := benchSel("app", fmt.Sprintf("app-%d", k%10))
			var pol *networkingv1.NetworkPolicy
			switch k % 4 {
			case 0:
				pol = benchPolicy(ns, fmt.Sprintf("p%d", k), app,
					benchIngress(benchPodPeer(benchSel("app", fmt.Sprintf("app-%d", (k+1)%10))), benchTCPPort(80), benchTCPRange(9000, 9100)))
			case 1:
				named := intstr.FromString("http")
				pol = benchPolicy(ns, fmt.Sprintf("p%d", k), app,
					benchIngress(networkingv1.NetworkPolicyPeer{NamespaceSelector: benchSel("team", fmt.Sprintf("t%d", k%5)),
						PodSelector: benchSel("tier", "web")}, networkingv1.NetworkPolicyPort{Port: &named}))
			case 2:
				pol = benchPolicy(ns, fmt.Sprintf("p%d", k), benchSel("tier", "db"),
					benchIngress(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8",
						Except: []string{fmt.Sprintf("10.46.%d.0/24", k)}}}))
			default:
				pol = benchPolicy(ns, fmt.Sprintf("p%d", k), app,
					benchIngress(networkingv1.NetworkPolicyPeer{NamespaceSelector: benchSel("team", "t1")}, benchTCPPort(443)))
			}
			in.Policies = append(in.Policies, pol)
		}
	}
	return in
}

func benchNS(name string, labels map[string]string) *corev1.Namespace {
	l := map[string]string{"kubernetes.io/metadata.name": name}
	for k, v := range labels {
		l[k] = v
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

func benchPod(ns, name, node, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func benchSel(k, v string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
}

func benchPolicy(ns, name string, target *metav1.LabelSelector, rules ...networkingv1.NetworkPolicyIngressRule) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *target, Ingress: rules,
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
}

func benchIngress(peer networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{peer}, Ports: ports}
}

func benchPodPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func benchTCPPort(p int32) networkingv1.NetworkPolicyPort {
	proto, port := corev1.ProtocolTCP, intstr.FromInt32(p)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &port}
}

func benchTCPRange(from, to int32) networkingv1.NetworkPolicyPort {
	p := benchTCPPort(from)
	p.EndPort = &to
	return p
}
