package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

func mkNode(name, ip string, labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}}}
}

var cnpActions = []cnp.ClusterNetworkPolicyRuleAction{
	cnp.ClusterNetworkPolicyRuleActionAccept, cnp.ClusterNetworkPolicyRuleActionDeny, cnp.ClusterNetworkPolicyRuleActionPass}

func randNamespacedPod(r *rand.Rand) *cnp.NamespacedPod {
	return &cnp.NamespacedPod{
		NamespaceSelector: *randSelector(r, nsLabelKeys, "kubernetes.io/metadata.name"),
		PodSelector:       *randSelector(r, podLabelKeys, "nope"),
	}
}

func randCNPPort(r *rand.Rand) *cnp.Port {
	switch r.IntN(4) {
	case 0:
		return nil
	case 1:
		return &cnp.Port{Range: &cnp.PortRange{Start: 80, End: 81}}
	}
	return &cnp.Port{Number: pick[int32](r, 80, 81, 82)}
}

func randProtocols(r *rand.Rand) []cnp.ClusterNetworkPolicyProtocol {
	var out []cnp.ClusterNetworkPolicyProtocol
	for range r.IntN(3) {
		switch r.IntN(4) {
		case 0:
			out = append(out, cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: randCNPPort(r)}})
		case 1:
			out = append(out, cnp.ClusterNetworkPolicyProtocol{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: randCNPPort(r)}})
		case 2:
			out = append(out, cnp.ClusterNetworkPolicyProtocol{SCTP: &cnp.ClusterNetworkPolicyProtocolSCTP{DestinationPort: randCNPPort(r)}})
		default:
			out = append(out, cnp.ClusterNetworkPolicyProtocol{DestinationNamedPort: pick(r, "serve-80", "serve-81", "web")})
		}
	}
	return out
}

func randCNP(r *rand.Rand, i int) *cnp.ClusterNetworkPolicy {
	p := &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("c%d", i)}}
	p.Spec.Tier = pick(r, cnp.AdminTier, cnp.BaselineTier)
	p.Spec.Priority = int32(r.IntN(4))
	if r.IntN(2) == 0 {
		p.Spec.Subject.Namespaces = randSelector(r, nsLabelKeys, "kubernetes.io/metadata.name")
	} else {
		p.Spec.Subject.Pods = randNamespacedPod(r)
	}
	for j := range r.IntN(3) {
		rule := cnp.ClusterNetworkPolicyIngressRule{Name: fmt.Sprintf("in-%d", j), Action: pick(r, cnpActions...), Protocols: randProtocols(r)}
		for range 1 + r.IntN(2) {
			switch r.IntN(7) {
			case 0:
				rule.From = append(rule.From, cnp.ClusterNetworkPolicyIngressPeer{}) // fail closed
			case 1, 2, 3:
				rule.From = append(rule.From, cnp.ClusterNetworkPolicyIngressPeer{Namespaces: randSelector(r, nsLabelKeys, "kubernetes.io/metadata.name")})
			default:
				rule.From = append(rule.From, cnp.ClusterNetworkPolicyIngressPeer{Pods: randNamespacedPod(r)})
			}
		}
		p.Spec.Ingress = append(p.Spec.Ingress, rule)
	}
	for j := range r.IntN(3) {
		rule := cnp.ClusterNetworkPolicyEgressRule{Name: fmt.Sprintf("eg-%d", j), Action: pick(r, cnpActions...), Protocols: randProtocols(r)}
		for range 1 + r.IntN(2) {
			switch r.IntN(9) {
			case 0:
				rule.To = append(rule.To, cnp.ClusterNetworkPolicyEgressPeer{})
			case 1, 2:
				rule.To = append(rule.To, cnp.ClusterNetworkPolicyEgressPeer{Namespaces: randSelector(r, nsLabelKeys, "kubernetes.io/metadata.name")})
			case 3, 4:
				rule.To = append(rule.To, cnp.ClusterNetworkPolicyEgressPeer{Pods: randNamespacedPod(r)})
			case 5:
				rule.To = append(rule.To, cnp.ClusterNetworkPolicyEgressPeer{Nodes: randSelector(r, map[string][]string{"zone": {"a", "b"}}, "nope")})
			default:
				var nets []cnp.CIDR
				for range 1 + r.IntN(2) {
					nets = append(nets, cnp.CIDR(pick(r, "10.0.0.0/16", "10.0.1.0/24", "10.0.2.0/25", "10.0.0.0/8", "0.0.0.0/0", "10.0.1.2/32", "192.168.0.0/16")))
				}
				rule.To = append(rule.To, cnp.ClusterNetworkPolicyEgressPeer{Networks: nets})
			}
		}
		p.Spec.Egress = append(p.Spec.Egress, rule)
	}
	return p
}

func randTierInput(r *rand.Rand) Input {
	in := randInput(r)
	in.Nodes = []*corev1.Node{
		mkNode(testNode, uniNodeAddr, map[string]string{"zone": pick(r, "a", "b")}),
		mkNode("node-2", "10.1.0.1", map[string]string{"zone": pick(r, "a", "b")}),
	}
	for i := range 1 + r.IntN(4) {
		in.ClusterPolicies = append(in.ClusterPolicies, randCNP(r, i))
	}
	return in
}

// TestTiersMatchReference compares the compiled tiers with the reference
// evaluator on random universes with ClusterNetworkPolicies of both tiers
// beside the NetworkPolicies, for every pair of addresses, several
// protocols (ICMP included) and ports.
func TestTiersMatchReference(t *testing.T) {
	cases := 2000
	if testing.Short() {
		cases = 200
	}
	kinds := map[DecisionKind]int{}
	for seed := range uint64(cases) {
		checkTierSeed(t, seed, kinds)
	}
	t.Logf("%d cases: decisions %v", cases, kinds)
	if kinds[AcceptedByCluster] == 0 || kinds[DeniedByCluster] == 0 || kinds[DefaultDeny] == 0 || kinds[AllowedByPolicy] == 0 {
		t.Errorf("the random universes miss a kind of decision: %v", kinds)
	}
}

// FuzzTiersMatchReference explores more seeds:
// go test -fuzz FuzzTiersMatchReference -fuzztime 30s ./policy
func FuzzTiersMatchReference(f *testing.F) {
	for seed := range uint64(10) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, seed uint64) { checkTierSeed(t, seed, map[DecisionKind]int{}) })
}

func checkTierSeed(t *testing.T, seed uint64, kinds map[DecisionKind]int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 11))
	in := randTierInput(r)
	rs := Compile(in)
	if len(rs.Warnings) > 0 {
		t.Fatalf("seed %d: warnings %v", seed, rs.Warnings)
	}
	checkRuleSet(t, seed, rs)
	checkRegions(t, seed, rs)
	addrs := append(universeAddrs(), netip.MustParseAddr("192.168.7.7"))
	for _, src := range addrs {
		for _, dst := range addrs {
			for _, proto := range []Proto{ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP} {
				for _, port := range []uint16{80, 81, 82} {
					if proto == ProtoICMP && port != 80 {
						continue
					}
					pkt := Packet{Src: src, Dst: dst, Proto: proto, Port: port}
					got, why := rs.Allows(pkt)
					kinds[why.Egress.Kind]++
					kinds[why.Ingress.Kind]++
					if want := refAllows(in, pkt); got != want {
						t.Fatalf("seed %d: %s: compiled %v (%s), reference %v\n%s", seed, pkt, got, why, want, describeTierInput(in))
					}
				}
			}
		}
	}
}

// checkRegions checks that the regions of every tier are disjoint and well
// formed, as the kernel's interval map needs.
func checkRegions(t *testing.T, seed uint64, rs RuleSet) {
	t.Helper()
	for _, p := range rs.Pods {
		for _, tr := range []TierRules{p.Ingress.Admin, p.Ingress.Baseline, p.Egress.Admin, p.Egress.Baseline} {
			for i, a := range tr.Regions {
				if a.Peer.To.Less(a.Peer.From) || a.ProtoTo < a.ProtoFrom || a.Ports.To < a.Ports.From {
					t.Fatalf("seed %d: pod %s: empty region %s", seed, p.Key(), a)
				}
				// The region's action is that of the first rule at its corners.
				for _, peer := range []netip.Addr{a.Peer.From, a.Peer.To} {
					for _, proto := range []Proto{a.ProtoFrom, a.ProtoTo} {
						for _, port := range []uint16{a.Ports.From, a.Ports.To} {
							tr := tr
							if rule := tr.rule(peer, proto, port); rule.Policy == "" || rule.Action != a.Action {
								t.Fatalf("seed %d: pod %s: region %s, but the first rule at %s %s/%d is %+v", seed, p.Key(), a, peer, proto, port, rule)
							}
						}
					}
				}
				ab := box{a.Peer, a.ProtoFrom, a.ProtoTo, a.Ports}
				for _, b := range tr.Regions[i+1:] {
					if ab.overlaps(box{b.Peer, b.ProtoFrom, b.ProtoTo, b.Ports}) {
						t.Fatalf("seed %d: pod %s: regions %s and %s overlap", seed, p.Key(), a, b)
					}
				}
			}
		}
	}
}

func describeTierInput(in Input) string {
	s := describeInput(in)
	for _, n := range in.Nodes {
		s += fmt.Sprintf("node %s %v\n", n.Name, n.Labels)
	}
	for _, p := range in.ClusterPolicies {
		s += fmt.Sprintf("cnp %s %+v\n", p.Name, p.Spec)
	}
	return s
}

// mkCNP makes a ClusterNetworkPolicy whose subject is the namespace ns.
func mkCNP(name string, tier cnp.Tier, prio int32, ns string) *cnp.ClusterNetworkPolicy {
	return &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: cnp.ClusterNetworkPolicySpec{
		Tier: tier, Priority: prio,
		Subject: cnp.ClusterNetworkPolicySubject{Namespaces: sel(namespaceNameLabel, ns)},
	}}
}

// withIngress adds an ingress rule from the namespace ns, for TCP ports
// from-to (0: every protocol).
func withIngress(p *cnp.ClusterNetworkPolicy, name string, a cnp.ClusterNetworkPolicyRuleAction, ns string, from, to int32) *cnp.ClusterNetworkPolicy {
	r := cnp.ClusterNetworkPolicyIngressRule{Name: name, Action: a,
		From: []cnp.ClusterNetworkPolicyIngressPeer{{Namespaces: sel(namespaceNameLabel, ns)}}}
	if from > 0 {
		r.Protocols = []cnp.ClusterNetworkPolicyProtocol{{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{
			DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: from, End: to}}}}}
	}
	p.Spec.Ingress = append(p.Spec.Ingress, r)
	return p
}
