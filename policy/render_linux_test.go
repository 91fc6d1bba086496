package policy

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// goldenInput is a small node: two local pods in x (one dual-stack), a
// remote pod in y, a default deny and an allowance.
func goldenInput() Input {
	a := mkPod("x", "a", "10.32.0.5", map[string]string{"app": "web"}, namedPort("http", 8080, ""))
	a.Status.PodIPs = append(a.Status.PodIPs, corev1.PodIP{IP: "fd00::5"})
	b := mkPod("x", "b", "10.32.0.6", map[string]string{"app": "db"})
	b.Status.PodIPs = append(b.Status.PodIPs, corev1.PodIP{IP: "fd00::6"})
	return Input{
		NodeName:   testNode,
		NodeAddrs:  []netip.Addr{addr("10.32.0.1"), addr("fd00::1")},
		Namespaces: []*corev1.Namespace{mkNS("x", nil), mkNS("y", map[string]string{"team": "blue"})},
		Pods: []*corev1.Pod{
			a,
			b,
			onNode(mkPod("y", "c", "10.32.1.7", map[string]string{"app": "client"}), "node-2"),
			onNode(mkPod("y", "d", "10.32.1.8", map[string]string{"app": "client"}), "node-2"),
		},
		Policies: []*networkingv1.NetworkPolicy{
			mkPolicy("x", "deny-all", &metav1.LabelSelector{}, types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)),
			mkPolicy("x", "web", sel("app", "web"),
				ingressRule(peers(nsPeer(sel("team", "blue"))), namedPolicyPort("", "http")),
				egressRule(peers(blockPeer("10.0.0.0/8", "10.32.1.0/24"), blockPeer("fd00::/64", "fd00::6/128")),
					port(corev1.ProtocolUDP, 53), portRange(corev1.ProtocolTCP, 8000, 8099))),
			mkPolicy("x", "db", sel("app", "db"), ingressRule(peers(podPeer(sel("app", "web"))))),
		},
	}
}

// tiersInput is goldenInput with an Admin policy that denies y to x/a on
// TCP 8080, accepts y's DNS and passes the rest of y, and a Baseline
// policy that denies everything else into x.
func tiersInput() Input {
	in := goldenInput()
	in.Policies = in.Policies[2:] // only x/db isolates, for ingress
	in.ClusterPolicies = []*cnp.ClusterNetworkPolicy{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "guard-x"},
			Spec: cnp.ClusterNetworkPolicySpec{
				Tier: cnp.AdminTier, Priority: 10,
				Subject: cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{
					NamespaceSelector: *sel("kubernetes.io/metadata.name", "x"), PodSelector: *sel("app", "web")}},
				Ingress: []cnp.ClusterNetworkPolicyIngressRule{
					{Name: "no-http", Action: cnp.ClusterNetworkPolicyRuleActionDeny,
						From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: sel("team", "blue")}},
						Protocols: []cnp.ClusterNetworkPolicyProtocol{{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{
							DestinationPort: &cnp.Port{Number: 8080}}}}},
					{Name: "rest", Action: cnp.ClusterNetworkPolicyRuleActionPass,
						From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: sel("team", "blue")}}},
				},
				Egress: []cnp.ClusterNetworkPolicyEgressRule{
					{Name: "dns", Action: cnp.ClusterNetworkPolicyRuleActionAccept,
						To: []cnp.ClusterNetworkPolicyEgressPeer{{Networks: []cnp.CIDR{"10.96.0.0/12"}}},
						Protocols: []cnp.ClusterNetworkPolicyProtocol{{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{
							DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: 53, End: 54}}}}}},
				},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "baseline-x"},
			Spec: cnp.ClusterNetworkPolicySpec{
				Tier: cnp.BaselineTier, Priority: 5,
				Subject: cnp.ClusterNetworkPolicySubject{Namespaces: sel("kubernetes.io/metadata.name", "x")},
				Ingress: []cnp.ClusterNetworkPolicyIngressRule{
					{Action: cnp.ClusterNetworkPolicyRuleActionDeny,
						From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}},
				},
			},
		},
	}
	return in
}

func TestRenderGolden(t *testing.T) {
	tests := []struct {
		name string
		in   Input
		cfg  Config
	}{
		{"empty", Input{NodeName: testNode}, Config{}},
		{"node", goldenInput(), Config{}},
		{"node-nolog", goldenInput(), Config{NoLog: true, LogRate: 10}},
		{"tiers", tiersInput(), Config{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := render(Compile(tt.in), tt.cfg.withDefaults()).Text()
			path := filepath.Join("testdata", tt.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("render differs from %s (go test -update refreshes it):\n%s", path, got)
			}
		})
	}
}
