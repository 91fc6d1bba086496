package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A small universe in the style of the upstream network-policy tests:
// namespaces x, y, z with pods a, b, c, a few labels, ports 80 and 81.

var (
	uniNamespaces = []string{"x", "y", "z"}
	uniPods       = []string{"a", "b", "c"}
	uniExternal   = []string{"10.1.0.1", "10.0.3.7", "192.168.1.1"}
	uniNodeAddr   = "10.0.100.1"
)

func pick[T any](r *rand.Rand, xs ...T) T { return xs[r.IntN(len(xs))] }

func randLabels(r *rand.Rand, keys map[string][]string) map[string]string {
	l := map[string]string{}
	for k, vs := range keys {
		if r.IntN(3) > 0 {
			l[k] = pick(r, vs...)
		}
	}
	return l
}

var (
	podLabelKeys = map[string][]string{"app": {"a", "b", "c"}, "role": {"web", "db"}}
	nsLabelKeys  = map[string][]string{"team": {"red", "blue"}, "env": {"prod", "dev"}}
)

func randSelector(r *rand.Rand, keys map[string][]string, extraKey string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	var ks []string
	for k := range keys {
		ks = append(ks, k)
	}
	ks = append(ks, extraKey)
	n := r.IntN(3)
	for range n {
		k := pick(r, ks...)
		vals := keys[k]
		if k == extraKey {
			vals = uniNamespaces
		}
		if r.IntN(2) == 0 {
			if s.MatchLabels == nil {
				s.MatchLabels = map[string]string{}
			}
			s.MatchLabels[k] = pick(r, vals...)
			continue
		}
		op := pick(r, metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn, metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist)
		req := metav1.LabelSelectorRequirement{Key: k, Operator: op}
		if op == metav1.LabelSelectorOpIn || op == metav1.LabelSelectorOpNotIn {
			req.Values = []string{pick(r, vals...)}
			if r.IntN(2) == 0 {
				req.Values = append(req.Values, pick(r, vals...))
				if req.Values[0] == req.Values[1] {
					req.Values = req.Values[:1]
				}
			}
		}
		s.MatchExpressions = append(s.MatchExpressions, req)
	}
	return s
}

func randPeer(r *rand.Rand) networkingv1.NetworkPolicyPeer {
	switch r.IntN(4) {
	case 0:
		return podPeer(randSelector(r, podLabelKeys, "nope"))
	case 1:
		return nsPeer(randSelector(r, nsLabelKeys, "kubernetes.io/metadata.name"))
	case 2:
		return nsPodPeer(randSelector(r, nsLabelKeys, "kubernetes.io/metadata.name"), randSelector(r, podLabelKeys, "nope"))
	}
	cidr := pick(r, "10.0.0.0/16", "10.0.1.0/24", "10.0.2.0/24", "10.0.0.0/8", "0.0.0.0/0", "10.0.1.2/32")
	var except []string
	for range r.IntN(3) {
		e := pick(r, "10.0.1.1/32", "10.0.2.0/25", "10.0.3.0/24", "10.0.1.2/31", "10.0.100.1/32")
		if netip.MustParsePrefix(cidr).Bits() <= netip.MustParsePrefix(e).Bits() &&
			netip.MustParsePrefix(cidr).Contains(netip.MustParsePrefix(e).Addr()) {
			except = append(except, e)
		}
	}
	return blockPeer(cidr, except...)
}

func randPort(r *rand.Rand) networkingv1.NetworkPolicyPort {
	proto := pick[corev1.Protocol](r, "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP)
	switch r.IntN(5) {
	case 0:
		if proto == "" {
			return networkingv1.NetworkPolicyPort{}
		}
		return protoOnly(proto)
	case 1:
		return portRange(proto, 80, 81)
	case 2:
		return namedPolicyPort(proto, pick(r, "serve-80", "serve-81", "web"))
	}
	return port(proto, pick(r, 80, 81, 82))
}

func randPolicy(r *rand.Rand, i int) *networkingv1.NetworkPolicy {
	p := mkPolicy(pick(r, uniNamespaces...), fmt.Sprintf("p%d", i), randSelector(r, podLabelKeys, "nope"))
	switch r.IntN(5) {
	case 1:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 2:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 3:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	randRule := func() ([]networkingv1.NetworkPolicyPeer, []networkingv1.NetworkPolicyPort) {
		var ps []networkingv1.NetworkPolicyPeer
		for range r.IntN(3) {
			ps = append(ps, randPeer(r))
		}
		var pts []networkingv1.NetworkPolicyPort
		for range r.IntN(3) {
			pts = append(pts, randPort(r))
		}
		return ps, pts
	}
	for range r.IntN(3) {
		ps, pts := randRule()
		p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: ps, Ports: pts})
	}
	for range r.IntN(3) {
		ps, pts := randRule()
		p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: ps, Ports: pts})
	}
	return p
}

func randInput(r *rand.Rand) Input {
	in := Input{NodeName: testNode, NodeAddrs: []netip.Addr{addr(uniNodeAddr)}}
	for _, ns := range uniNamespaces {
		in.Namespaces = append(in.Namespaces, mkNS(ns, randLabels(r, nsLabelKeys)))
	}
	for i, ns := range uniNamespaces {
		for j, name := range uniPods {
			var ports []corev1.ContainerPort
			for _, pn := range []string{"serve-80", "serve-81", "web"} {
				if r.IntN(2) == 0 {
					ports = append(ports, namedPort(pn, pick[int32](r, 80, 81), pick(r, corev1.ProtocolTCP, corev1.ProtocolUDP, "")))
				}
			}
			p := mkPod(ns, name, fmt.Sprintf("10.0.%d.%d", i+1, j+1), randLabels(r, podLabelKeys), ports...)
			switch r.IntN(8) {
			case 0:
				onNode(p, "node-2")
			case 1:
				p.Spec.HostNetwork = r.IntN(2) == 0
			}
			in.Pods = append(in.Pods, p)
		}
	}
	for i := range r.IntN(5) {
		in.Policies = append(in.Policies, randPolicy(r, i))
	}
	return in
}

func universeAddrs() []netip.Addr {
	var out []netip.Addr
	for i := range uniNamespaces {
		for j := range uniPods {
			out = append(out, addr(fmt.Sprintf("10.0.%d.%d", i+1, j+1)))
		}
	}
	for _, e := range append(uniExternal, uniNodeAddr) {
		out = append(out, addr(e))
	}
	return out
}

// TestCompileMatchesReference compares the compiled rule set with the
// reference evaluator on random universes, for every pair of addresses,
// protocol and port.
func TestCompileMatchesReference(t *testing.T) {
	cases := 3000
	if testing.Short() {
		cases = 300
	}
	var allowed, denied int
	for seed := range uint64(cases) {
		a, d := checkSeed(t, seed)
		allowed += a
		denied += d
	}
	t.Logf("%d cases: %d packets allowed, %d denied", cases, allowed, denied)
	if denied < allowed/20 || allowed < denied/20 {
		t.Errorf("the random universes are lopsided: %d allowed, %d denied", allowed, denied)
	}
}

// FuzzCompileMatchesReference explores more seeds:
// go test -fuzz FuzzCompileMatchesReference -fuzztime 30s ./policy
func FuzzCompileMatchesReference(f *testing.F) {
	for seed := range uint64(10) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, seed uint64) { checkSeed(t, seed) })
}

// checkSeed compiles the universe of one seed and compares every packet
// with the reference; it returns how many were allowed and denied.
func checkSeed(t *testing.T, seed uint64) (allowed, denied int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	in := randInput(r)
	rs := Compile(in)
	if len(rs.Warnings) > 0 {
		t.Fatalf("seed %d: warnings %v", seed, rs.Warnings)
	}
	checkRuleSet(t, seed, rs)
	addrs := universeAddrs()
	for _, src := range addrs {
		for _, dst := range addrs {
			for _, proto := range []Proto{ProtoTCP, ProtoUDP, ProtoSCTP} {
				for _, port := range []uint16{80, 81, 82} {
					pkt := Packet{Src: src, Dst: dst, Proto: proto, Port: port}
					got, why := rs.Allows(pkt)
					if got {
						allowed++
					} else {
						denied++
					}
					if want := refAllows(in, pkt); got != want {
						t.Fatalf("seed %d: %s: compiled %v (%s), reference %v\n%s", seed, pkt, got, why, want, describeInput(in))
					}
					if got && (why.Egress.Kind == AllowedByPolicy && len(why.Egress.Policies) == 0 ||
						why.Ingress.Kind == AllowedByPolicy && len(why.Ingress.Policies) == 0) {
						t.Fatalf("seed %d: %s allowed without a policy that grants it: %s", seed, pkt, why)
					}
				}
			}
		}
	}
	return allowed, denied
}

// checkRuleSet checks the invariants the applier relies on: entries are
// sorted, disjoint and of the pod's address families.
func checkRuleSet(t *testing.T, seed uint64, rs RuleSet) {
	t.Helper()
	for _, p := range rs.Pods {
		for _, d := range []DirRules{p.Ingress, p.Egress} {
			for i, e := range d.Allow {
				if e.Peer.To.Less(e.Peer.From) || e.Ports.To < e.Ports.From {
					t.Fatalf("seed %d: pod %s: empty entry %s", seed, p.Key(), e)
				}
				for _, f := range d.Allow[i+1:] {
					if overlaps(e, f) {
						t.Fatalf("seed %d: pod %s: entries %s and %s overlap", seed, p.Key(), e, f)
					}
				}
			}
		}
	}
}

func overlaps(a, b Entry) bool {
	if a.Peer.From.BitLen() != b.Peer.From.BitLen() || a.Peer.To.Less(b.Peer.From) || b.Peer.To.Less(a.Peer.From) {
		return false
	}
	if a.Proto == ProtoAny || b.Proto == ProtoAny {
		return true
	}
	return a.Proto == b.Proto && a.Ports.From <= b.Ports.To && b.Ports.From <= a.Ports.To
}

func describeInput(in Input) string {
	s := ""
	for _, ns := range in.Namespaces {
		s += fmt.Sprintf("ns %s %v\n", ns.Name, ns.Labels)
	}
	for _, p := range in.Pods {
		s += fmt.Sprintf("pod %s/%s %s node=%s host=%v labels=%v ports=%v\n", p.Namespace, p.Name, p.Status.PodIP, p.Spec.NodeName, p.Spec.HostNetwork, p.Labels, p.Spec.Containers[0].Ports)
	}
	for _, p := range in.Policies {
		s += fmt.Sprintf("policy %s/%s %+v\n", p.Namespace, p.Name, p.Spec)
	}
	return s
}
