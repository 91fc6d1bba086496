package policy

import (
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// benchTiersInput is benchInput (5,000 pods, 1,000 NetworkPolicies) with
// 100 ClusterNetworkPolicies, 60 Admin and 40 Baseline, of five shapes:
// namespace subjects with deny and pass rules, pod subjects with egress to
// networks, cluster-wide accepts of port ranges, baseline defaults per
// namespace, and baseline egress denies by label.
func benchTiersInput() Input {
	in := benchInput()
	for i := range 100 {
		p := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("c%d", i)}}
		p.Spec.Priority = int32(i)
		team := func(k int) *metav1.LabelSelector { return sel("team", fmt.Sprintf("t%d", k%5)) }
		tcp := func(from, to int32) cnp.ClusterNetworkPolicyProtocol {
			return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{
				DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: from, End: to}}}}
		}
		switch i % 5 {
		case 0:
			p.Spec.Tier = cnp.AdminTier
			p.Spec.Subject.Namespaces = team(i)
			p.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{
				{Action: cnp.ClusterNetworkPolicyRuleActionDeny, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: team(i + 1)}}, Protocols: []cnp.ClusterNetworkPolicyProtocol{tcp(22, 22)}},
				{Action: cnp.ClusterNetworkPolicyRuleActionPass, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}},
			}
		case 1:
			p.Spec.Tier = cnp.AdminTier
			p.Spec.Subject.Pods = &cnp.NamespacedPod{NamespaceSelector: *team(i), PodSelector: *sel("app", fmt.Sprintf("app-%d", i%10))}
			p.Spec.Egress = []cnp.ClusterNetworkPolicyEgressRule{
				{Action: cnp.ClusterNetworkPolicyRuleActionAccept, To: []cnp.ClusterNetworkPolicyEgressPeer{{Networks: []cnp.CIDR{"10.96.0.0/12"}}},
					Protocols: []cnp.ClusterNetworkPolicyProtocol{{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnp.Port{Number: 53}}}}},
				{Action: cnp.ClusterNetworkPolicyRuleActionDeny, To: []cnp.ClusterNetworkPolicyEgressPeer{{Networks: []cnp.CIDR{"0.0.0.0/0"}}}, Protocols: []cnp.ClusterNetworkPolicyProtocol{tcp(25, 25)}},
			}
		case 2:
			p.Spec.Tier = cnp.AdminTier
			p.Spec.Subject.Namespaces = &metav1.LabelSelector{}
			p.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{
				{Action: cnp.ClusterNetworkPolicyRuleActionAccept, From: []cnp.ClusterNetworkPolicyIngressPeer{{Pods: &cnp.NamespacedPod{
					NamespaceSelector: *team(i), PodSelector: *sel("tier", "web")}}}, Protocols: []cnp.ClusterNetworkPolicyProtocol{tcp(8000+int32(i), 8100+int32(i))}},
			}
		case 3:
			p.Spec.Tier = cnp.BaselineTier
			p.Spec.Subject.Namespaces = sel(namespaceNameLabel, fmt.Sprintf("ns-%d", i%50))
			p.Spec.Ingress = []cnp.ClusterNetworkPolicyIngressRule{
				{Action: cnp.ClusterNetworkPolicyRuleActionDeny, From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}},
			}
		default:
			p.Spec.Tier = cnp.BaselineTier
			p.Spec.Subject.Pods = &cnp.NamespacedPod{PodSelector: *sel("tier", "db")}
			p.Spec.Egress = []cnp.ClusterNetworkPolicyEgressRule{
				{Action: cnp.ClusterNetworkPolicyRuleActionDeny, To: []cnp.ClusterNetworkPolicyEgressPeer{{Namespaces: team(i)}}},
			}
		}
		in.ClusterPolicies = append(in.ClusterPolicies, p)
	}
	return in
}

func BenchmarkCompileTiers(b *testing.B) {
	in := benchTiersInput()
	var rs RuleSet
	for b.Loop() {
		rs = Compile(in)
	}
	regions := 0
	for _, p := range rs.Pods {
		for _, d := range []DirRules{p.Ingress, p.Egress} {
			regions += len(d.Admin.Regions) + len(d.Baseline.Regions)
		}
	}
	if len(rs.Warnings) > 0 {
		b.Fatalf("warnings: %v", rs.Warnings)
	}
	b.ReportMetric(float64(len(rs.Pods)), "localpods")
	b.ReportMetric(float64(regions), "regions")
}
