package policy

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// benchInput is a big cluster: 50 namespaces of 100 pods (10 apps each) on
// 50 nodes with a /24 each, and 1,000 policies (20 per namespace) mixing
// pod, namespace and ipBlock peers, port ranges and named ports. This node
// holds 100 pods.
func benchInput() Input {
	const namespaces, podsPerNS, nodes = 50, 100, 50
	in := Input{NodeName: "node-0"}
	for n := range namespaces {
		in.Namespaces = append(in.Namespaces, mkNS(fmt.Sprintf("ns-%d", n),
			map[string]string{"team": fmt.Sprintf("t%d", n%5)}))
		for p := range podsPerNS {
			i := n*podsPerNS + p
			node := (p + n) % nodes
			pod := mkPod(fmt.Sprintf("ns-%d", n), fmt.Sprintf("pod-%d", p),
				fmt.Sprintf("10.32.%d.%d", node, i/nodes+1),
				map[string]string{"app": fmt.Sprintf("app-%d", p%10), "tier": []string{"web", "db"}[(p/10)%2]},
				namedPort("http", int32(8000+p%3), ""))
			onNode(pod, fmt.Sprintf("node-%d", node))
			in.Pods = append(in.Pods, pod)
		}
	}
	for n := range namespaces {
		ns := fmt.Sprintf("ns-%d", n)
		for k := range 20 {
			app := fmt.Sprintf("app-%d", k%10)
			var pol *networkingv1.NetworkPolicy
			switch k % 4 {
			case 0:
				pol = mkPolicy(ns, fmt.Sprintf("p%d", k), sel("app", app),
					ingressRule(peers(podPeer(sel("app", fmt.Sprintf("app-%d", (k+1)%10)))), port("", 80), portRange("", 9000, 9100)))
			case 1:
				pol = mkPolicy(ns, fmt.Sprintf("p%d", k), sel("app", app),
					ingressRule(peers(nsPodPeer(sel("team", fmt.Sprintf("t%d", k%5)), sel("tier", "web"))), namedPolicyPort("", "http")))
			case 2:
				pol = mkPolicy(ns, fmt.Sprintf("p%d", k), sel("tier", "db"),
					types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress),
					ingressRule(peers(blockPeer("10.0.0.0/8", fmt.Sprintf("10.32.%d.0/24", k)))),
					egressRule(peers(nsPeer(&metav1.LabelSelector{})), port(corev1.ProtocolUDP, 53)),
					egressRule(peers(podPeer(sel("app", app))), namedPolicyPort("", "http")))
			default:
				pol = mkPolicy(ns, fmt.Sprintf("p%d", k), selExpr("app", metav1.LabelSelectorOpIn, app, "app-9"),
					ingressRule(peers(nsPeer(sel("team", "t1")), podPeer(&metav1.LabelSelector{})), port(corev1.ProtocolTCP, 443)))
			}
			in.Policies = append(in.Policies, pol)
		}
	}
	return in
}

func BenchmarkCompile(b *testing.B) {
	in := benchInput()
	var rs RuleSet
	for b.Loop() {
		rs = Compile(in)
	}
	entries := 0
	for _, p := range rs.Pods {
		entries += len(p.Ingress.Allow) + len(p.Egress.Allow)
	}
	b.ReportMetric(float64(len(rs.Pods)), "localpods")
	b.ReportMetric(float64(entries), "entries")
}
