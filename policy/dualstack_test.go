package policy

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// dualStack gives pod p its IPv6 address beside its IPv4 one, as the
// kubelet writes status.podIPs in a dual-stack cluster.
func dualStack(p *corev1.Pod, ip6 string) *corev1.Pod {
	p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip6})
	return p
}

// TestCompileDualStack: pod selectors match both of a pod's addresses,
// and an IPv6 ipBlock (with an except) admits the IPv6 addresses it
// covers and nothing of IPv4.
func TestCompileDualStack(t *testing.T) {
	const xa6, xb6, ya6, yb6 = "fd10::101", "fd10::102", "fd10::201", "fd10::202"
	in := tableInput(
		mkPolicy("x", "a-from-b", sel("app", "a"), ingressRule(peers(podPeer(sel("app", "b"))))),
		mkPolicy("y", "b-from-v6", sel("app", "b"), ingressRule(peers(blockPeer("fd10::/64", "fd10::102/128")), port(corev1.ProtocolTCP, 80))),
	)
	for _, p := range in.Pods {
		switch p.Namespace + "/" + p.Name {
		case "x/a":
			dualStack(p, xa6)
		case "x/b":
			dualStack(p, xb6)
		case "y/a":
			dualStack(p, ya6)
		case "y/b":
			dualStack(p, yb6)
		}
	}
	rs := Compile(in)
	if len(rs.Warnings) > 0 {
		t.Errorf("warnings: %v", rs.Warnings)
	}
	for _, e := range []expect{
		allow(tcp(xb, xa, 80)), allow(tcp(xb6, xa6, 80)), // the selector matches x/b in both families
		deny(tcp(ya, xa, 80)), deny(tcp(ya6, xa6, 80)),
		allow(tcp(xa6, yb6, 80)), allow(tcp(ya6, yb6, 80)), // inside the block
		deny(tcp(xb6, yb6, 80)), // the except
		deny(tcp(xa, yb, 80)),   // an IPv6 block admits no IPv4 source
		deny(tcp(xa6, yb6, 81)), // another port
		deny(tcp("fd11::1", yb6, 80)),
	} {
		got, why := rs.Allows(e.pkt)
		if got != e.allow {
			t.Errorf("%s: allowed = %v (%s), want %v", e.pkt, got, why, e.allow)
		}
		if ref := refAllows(in, e.pkt); ref != e.allow {
			t.Errorf("%s: the reference evaluator says %v", e.pkt, ref)
		}
	}
}
