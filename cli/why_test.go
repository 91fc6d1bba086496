package cli

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestPrintWhy renders verdicts of a small cluster: x/web on node-1 takes
// TCP 80 from namespaces labelled team=blue; x/client is on node-2.
func TestPrintWhy(t *testing.T) {
	pod := func(ns, name, ip, node string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Spec:   corev1.PodSpec{NodeName: node},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}}
	}
	tcp := corev1.ProtocolTCP
	p80 := intstr.FromInt32(80)
	in := policy.Input{
		NodeName: "node-1",
		Namespaces: []*corev1.Namespace{
			{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"team": "blue"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "y"}},
		},
		Pods: []*corev1.Pod{
			pod("x", "web", "10.32.0.2", "node-1", map[string]string{"app": "web"}),
			pod("x", "client", "10.40.0.3", "node-2", nil),
			pod("y", "client", "10.40.0.4", "node-2", nil),
		},
		Policies: []*networkingv1.NetworkPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "web"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "blue"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p80}},
				}},
			},
		}},
		// An Admin tier that denies HTTPS from y to x and passes the rest
		// of y on to the NetworkPolicies.
		ClusterPolicies: []*cnp.ClusterNetworkPolicy{{
			ObjectMeta: metav1.ObjectMeta{Name: "guard"},
			Spec: cnp.ClusterNetworkPolicySpec{
				Tier: cnp.AdminTier, Priority: 5,
				Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "blue"}}},
				Ingress: []cnp.ClusterNetworkPolicyIngressRule{
					{Name: "no-https", Action: cnp.ClusterNetworkPolicyRuleActionDeny,
						From:      []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "y"}}}},
						Protocols: []cnp.ClusterNetworkPolicyProtocol{{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Number: 443}}}}},
					{Name: "rest-of-y", Action: cnp.ClusterNetworkPolicyRuleActionPass,
						From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "y"}}}}},
				},
			},
		}},
	}
	e := policy.NewExplainer(in, policy.Compile(in))
	pkt := func(src, dst string, proto policy.Proto, port uint16) policy.Packet {
		return policy.Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: proto, Port: port}
	}
	var out strings.Builder
	for _, p := range []policy.Packet{
		pkt("10.40.0.3", "10.32.0.2", policy.ProtoTCP, 80),
		pkt("10.40.0.3", "10.32.0.2", policy.ProtoTCP, 81),
		pkt("10.40.0.4", "10.32.0.2", policy.ProtoTCP, 80),
		pkt("10.40.0.3", "10.32.0.2", policy.ProtoICMP, 0),
		pkt("192.168.1.1", "10.40.0.4", policy.ProtoUDP, 53),
		pkt("10.40.0.4", "10.32.0.2", policy.ProtoTCP, 443),
	} {
		out.WriteString("# " + p.String() + "\n")
		if err := printWhy(&out, daemon.WhyAnswer{AnsweredBy: "node-1", Verdict: e.WhyCluster(p, nil)}); err != nil {
			t.Fatal(err)
		}
		out.WriteString("\n")
	}
	golden := filepath.Join("testdata", "why.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if out.String() != string(want) {
		t.Errorf("output differs from %s (run with -update after checking):\n%s", golden, out.String())
	}
}
