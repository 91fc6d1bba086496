package policy

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/weftnet/weft/policy/policytest"
)

// TestWhyMatchesReference checks `weft why` on the random universes of
// TestCompileMatchesReference, for every pair of addresses, protocol and
// port:
//   - Why (one node's view) gives the reference's verdict for that node,
//     and WhyCluster (each end on its own node) the reference's verdict for
//     the whole cluster;
//   - every allowance by a policy names the rules that allow, every denial
//     names the isolating policies and, when they have rules, the nearest
//     one and what it lacks; the rule walk never disagrees with the rule
//     set;
//   - the drop log's reason on the node that drops a packet is the reason
//     WhyCluster gives for it.
func TestWhyMatchesReference(t *testing.T) {
	cases := 150
	if testing.Short() {
		cases = 30
	}
	var allowed, denied int
	for seed := range uint64(cases) {
		a, d := checkWhySeed(t, seed)
		allowed += a
		denied += d
	}
	t.Logf("%d cases: %d packets allowed, %d denied across the cluster", cases, allowed, denied)
	if denied < allowed/20 || allowed < denied/20 {
		t.Errorf("the random universes are lopsided: %d allowed, %d denied", allowed, denied)
	}
}

func checkWhySeed(t *testing.T, seed uint64) (allowed, denied int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	in := randInput(r)
	e := NewExplainer(in, Compile(in))
	// The cluster-wide reference knows no node addresses.
	bare := in
	bare.NodeAddrs = nil
	eb := NewExplainer(bare, Compile(bare))
	addrs := universeAddrs()
	for _, src := range addrs {
		for _, dst := range addrs {
			for _, proto := range []Proto{ProtoTCP, ProtoUDP, ProtoSCTP} {
				for _, port := range []uint16{80, 81, 82} {
					pkt := Packet{Src: src, Dst: dst, Proto: proto, Port: port}
					local := e.Why(pkt)
					if want := refAllows(in, pkt); local.Allowed != want {
						t.Fatalf("seed %d: %s: Why %v (%s), reference %v\n%s", seed, pkt, local.Allowed, local.Reason, want, describeInput(in))
					}
					checkExplained(t, seed, pkt, local)
					cluster := eb.WhyCluster(pkt, nil)
					want := policytest.Reference(in.Pods, in.Namespaces, in.Policies,
						policytest.Packet{Src: src, Dst: dst, Proto: refProtocol(proto), Port: port})
					if cluster.Allowed != want {
						t.Fatalf("seed %d: %s: WhyCluster %v (%s), reference %v\n%s", seed, pkt, cluster.Allowed, cluster.Reason, want, describeInput(in))
					}
					checkExplained(t, seed, pkt, cluster)
					if cluster.Allowed {
						allowed++
					} else {
						denied++
					}
					// A packet this node drops: it starts here, or the
					// source's node let it out.
					full := e.WhyCluster(pkt, nil)
					if !local.Allowed && (local.Egress.Decision != NotLocal || full.Egress.Allowed) {
						if drop := e.ExplainDrop(pkt); drop != full.Reason {
							t.Fatalf("seed %d: %s: the drop log says %q, why says %q", seed, pkt, drop, full.Reason)
						}
					}
				}
			}
		}
	}
	return allowed, denied
}

// checkExplained checks that a verdict says what decided it.
func checkExplained(t *testing.T, seed uint64, pkt Packet, v Verdict) {
	t.Helper()
	if strings.Contains(v.Reason, "out of step") {
		t.Fatalf("seed %d: %s: the rule walk disagrees with the rule set: %s", seed, pkt, v.Reason)
	}
	for _, d := range []DirVerdict{v.Egress, v.Ingress} {
		switch d.Decision {
		case AllowedByPolicy:
			if len(d.AllowedBy) == 0 || len(d.Policies) == 0 {
				t.Fatalf("seed %d: %s allowed by a policy without naming the rule: %+v", seed, pkt, d)
			}
		case DefaultDeny:
			if len(d.Policies) == 0 {
				t.Fatalf("seed %d: %s denied without naming the isolating policies: %+v", seed, pkt, d)
			}
			if d.Nearest != nil && len(d.Nearest.Lacks) == 0 {
				t.Fatalf("seed %d: %s: the nearest rule lacks nothing: %+v", seed, pkt, d)
			}
			if d.Nearest == nil && !strings.Contains(d.Reason, "rules") {
				t.Fatalf("seed %d: %s: denied with neither a nearest rule nor a word on the rules: %s", seed, pkt, d.Reason)
			}
			if !strings.HasPrefix(d.Reason, "default deny: pod "+d.Pod) {
				t.Fatalf("seed %d: %s: a denial's reason starts otherwise: %s", seed, pkt, d.Reason)
			}
		}
	}
}
