package policy

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The table universe: namespaces x (team=red) and y (team=blue), pods a and
// b in each, all on this node; 192.168.0.1 is outside; 10.0.0.1 is the node.
const (
	xa, xb, ya, yb = "10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.2.2"
	outside        = "192.168.0.1"
	nodeAddr       = "10.0.0.1"
)

func tableInput(policies ...*networkingv1.NetworkPolicy) Input {
	return Input{
		NodeName:   testNode,
		NodeAddrs:  []netip.Addr{addr(nodeAddr)},
		Namespaces: []*corev1.Namespace{mkNS("x", map[string]string{"team": "red"}), mkNS("y", map[string]string{"team": "blue"})},
		Pods: []*corev1.Pod{
			mkPod("x", "a", xa, map[string]string{"app": "a", "tier": "web"}, namedPort("http", 8080, "")),
			mkPod("x", "b", xb, map[string]string{"app": "b"}, namedPort("http", 9090, ""), namedPort("dns", 53, corev1.ProtocolUDP)),
			mkPod("y", "a", ya, map[string]string{"app": "a"}, namedPort("http", 8080, "")),
			mkPod("y", "b", yb, map[string]string{"app": "b", "tier": "db"}),
		},
		Policies: policies,
	}
}

type expect struct {
	pkt    Packet
	allow  bool
	reason string // a substring of the reason, if not ""
}

func allow(p Packet) expect { return expect{pkt: p, allow: true} }
func deny(p Packet) expect  { return expect{pkt: p} }
func because(e expect, reason string) expect {
	e.reason = reason
	return e
}

func TestCompile(t *testing.T) {
	all := &metav1.LabelSelector{}
	ingressOnly := types(networkingv1.PolicyTypeIngress)
	egressOnly := types(networkingv1.PolicyTypeEgress)
	tests := []struct {
		name string
		in   Input
		want []expect
	}{
		{"no policies allow everything", tableInput(), []expect{
			because(allow(tcp(ya, xa, 80)), "pod x/a is selected by no policy for ingress"),
			allow(udp(outside, xb, 53)), allow(tcp(xa, outside, 443)),
		}},
		{"default deny ingress", tableInput(mkPolicy("x", "deny", all)), []expect{
			because(deny(tcp(ya, xa, 80)), "default deny: pod x/a is selected for ingress by policy x/deny and no rule matched"),
			deny(tcp(xb, xa, 80)),
			allow(tcp(xa, ya, 80)), // egress is not isolated
			allow(tcp(ya, yb, 80)), // y is not selected
			because(allow(tcp(nodeAddr, xa, 80)), "traffic from this node"),
			because(allow(tcp(xa, xa, 80)), "talks to itself"),
		}},
		{"pod selector in the policy's namespace", tableInput(
			mkPolicy("x", "from-b", sel("app", "a"), ingressRule(peers(podPeer(sel("app", "b")))))), []expect{
			because(allow(tcp(xb, xa, 80)), "allowed by policy x/from-b"),
			deny(tcp(yb, xa, 80)),  // app=b, but in y
			allow(tcp(xa, xb, 80)), // x/b is not selected
		}},
		{"namespace selector", tableInput(
			mkPolicy("x", "from-blue", all, ingressRule(peers(nsPeer(sel("team", "blue")))))), []expect{
			allow(tcp(ya, xa, 80)), allow(udp(yb, xb, 53)), deny(tcp(xb, xa, 80)), deny(tcp(outside, xa, 80)),
		}},
		{"namespace and pod selector in one peer is AND", tableInput(
			mkPolicy("x", "and", all, ingressRule(peers(nsPodPeer(sel("team", "blue"), sel("app", "b")))))), []expect{
			allow(tcp(yb, xa, 80)), deny(tcp(ya, xa, 80)), deny(tcp(xb, xa, 80)),
		}},
		{"two peers are OR", tableInput(
			mkPolicy("x", "or", all, ingressRule(peers(nsPeer(sel("team", "blue")), podPeer(sel("app", "b")))))), []expect{
			allow(tcp(yb, xa, 80)), allow(tcp(ya, xa, 80)), allow(tcp(xb, xa, 80)), deny(tcp(xa, xb, 80)),
		}},
		{"empty namespace selector selects every namespace", tableInput(
			mkPolicy("x", "any-ns", all, ingressRule(peers(nsPodPeer(all, sel("app", "a")))))), []expect{
			allow(tcp(ya, xb, 80)), allow(tcp(xa, xb, 80)), deny(tcp(yb, xb, 80)),
		}},
		{"match expressions", tableInput(
			mkPolicy("x", "in", sel("app", "a"), ingressRule(peers(nsPodPeer(all, selExpr("app", metav1.LabelSelectorOpIn, "b", "c"))))),
			mkPolicy("x", "notin", sel("app", "b"), ingressRule(peers(nsPodPeer(all, selExpr("tier", metav1.LabelSelectorOpNotIn, "db"))))),
			mkPolicy("y", "exists", sel("app", "a"), ingressRule(peers(nsPodPeer(all, selExpr("tier", metav1.LabelSelectorOpExists))))),
			mkPolicy("y", "doesnotexist", sel("app", "b"), ingressRule(peers(nsPodPeer(all, selExpr("tier", metav1.LabelSelectorOpDoesNotExist)))))), []expect{
			allow(tcp(yb, xa, 1)), deny(tcp(ya, xa, 1)), // In
			allow(tcp(ya, xb, 1)), deny(tcp(yb, xb, 1)), // NotIn: no tier label matches too
			allow(tcp(xa, ya, 1)), deny(tcp(xb, ya, 1)), // Exists
			allow(tcp(xb, yb, 1)), deny(tcp(xa, yb, 1)), // DoesNotExist
		}},
		{"ipBlock with except matches addresses", tableInput(
			mkPolicy("x", "cidr", all, ingressRule(peers(blockPeer("10.0.0.0/16", "10.0.2.0/24", "10.0.1.2/32"))))), []expect{
			allow(tcp(xa, xb, 80)), deny(tcp(xb, xa, 80)), deny(tcp(ya, xa, 80)), deny(tcp(outside, xa, 80)),
		}},
		{"an IPv4-mapped ipBlock matches IPv4 addresses", tableInput(
			mkPolicy("x", "mapped", all, ingressRule(peers(blockPeer("::ffff:10.0.2.0/120"))))), []expect{
			allow(tcp(ya, xa, 80)), deny(tcp(xb, xa, 80)),
		}},
		{"ports: numbers, default TCP, UDP, SCTP, endPort", tableInput(
			mkPolicy("x", "ports", all, ingressRule(nil, port("", 80), port(corev1.ProtocolUDP, 53),
				port(corev1.ProtocolSCTP, 9), portRange(corev1.ProtocolTCP, 1000, 1002), protoOnly(corev1.ProtocolUDP)))), []expect{
			allow(tcp(ya, xa, 80)), deny(tcp(ya, xa, 81)), deny(Packet{Src: addr(ya), Dst: addr(xa), Proto: ProtoSCTP, Port: 80}),
			allow(udp(ya, xa, 53)), allow(udp(ya, xa, 7777)), // all UDP ports
			allow(Packet{Src: addr(ya), Dst: addr(xa), Proto: ProtoSCTP, Port: 9}),
			allow(tcp(ya, xa, 1000)), allow(tcp(ya, xa, 1002)), deny(tcp(ya, xa, 1003)), deny(tcp(ya, xa, 999)),
			deny(Packet{Src: addr(ya), Dst: addr(xa), Proto: 1}), // ICMP: not listed
		}},
		{"a rule without ports allows every protocol", tableInput(
			mkPolicy("x", "all", all, ingressRule(peers(podPeer(all))))), []expect{
			allow(Packet{Src: addr(xb), Dst: addr(xa), Proto: 1}), allow(tcp(xb, xa, 65535)),
		}},
		{"named ports resolve on each destination pod for ingress", tableInput(
			mkPolicy("x", "http", all, ingressRule(nil, namedPolicyPort("", "http")), ingressRule(nil, namedPolicyPort(corev1.ProtocolUDP, "dns")))), []expect{
			allow(tcp(ya, xa, 8080)), deny(tcp(ya, xa, 9090)),
			allow(tcp(ya, xb, 9090)), deny(tcp(ya, xb, 8080)),
			allow(udp(ya, xb, 53)), deny(tcp(ya, xb, 53)), deny(udp(ya, xa, 53)),
		}},
		{"named ports resolve on the destination pod for egress", tableInput(
			mkPolicy("x", "out-http", sel("app", "a"), egressRule(nil, namedPolicyPort("", "http")))), []expect{
			allow(tcp(xa, xb, 9090)), deny(tcp(xa, xb, 8080)),
			allow(tcp(xa, ya, 8080)), deny(tcp(xa, yb, 8080)), // y/b has no http port
			deny(tcp(xa, outside, 8080)), // no pod, no named port
		}},
		{"named ports of pods inside an egress ipBlock", tableInput(
			mkPolicy("x", "out-http", sel("app", "a"), egressRule(peers(blockPeer("10.0.2.0/24")), namedPolicyPort("", "http")))), []expect{
			allow(tcp(xa, ya, 8080)), deny(tcp(xa, xb, 9090)),
		}},
		{"policyTypes default: egress only with egress rules, ingress always", tableInput(
			mkPolicy("x", "egress-rules", sel("app", "a"), egressRule(peers(podPeer(sel("app", "b")))))), []expect{
			allow(tcp(xa, xb, 80)), deny(tcp(xa, ya, 80)),
			because(deny(tcp(xb, xa, 80)), "selected for ingress by policy x/egress-rules"),
		}},
		{"policyTypes Egress ignores ingress rules and does not isolate ingress", tableInput(
			mkPolicy("x", "egress", sel("app", "a"), egressOnly, ingressRule(nil))), []expect{
			because(deny(tcp(xa, xb, 80)), "selected for egress by policy x/egress"),
			allow(tcp(xb, xa, 80)),
		}},
		{"policyTypes Ingress ignores egress rules", tableInput(
			mkPolicy("x", "ingress", sel("app", "a"), ingressOnly, egressRule(nil))), []expect{
			allow(tcp(xa, outside, 80)), deny(tcp(xb, xa, 80)),
		}},
		{"egress to an ipBlock and replies are not policy's business", tableInput(
			mkPolicy("x", "out", all, egressOnly, egressRule(peers(blockPeer("192.168.0.0/24")), port("", 443)))), []expect{
			allow(tcp(xa, outside, 443)), deny(tcp(xa, outside, 80)), deny(tcp(xa, ya, 443)),
			allow(tcp(outside, xa, 80)), // ingress not isolated
		}},
		{"policies are a union", tableInput(
			mkPolicy("x", "p1", sel("app", "a"), ingressRule(nil, port("", 80))),
			mkPolicy("x", "p2", sel("app", "a"), ingressRule(nil, port("", 81))),
			mkPolicy("x", "p3", all, ingressRule(nil, port("", 80)))), []expect{
			because(allow(tcp(ya, xa, 80)), "allowed by policies x/p1, x/p3"),
			because(allow(tcp(ya, xa, 81)), "allowed by policy x/p2"),
			because(deny(tcp(ya, xa, 82)), "selected for ingress by policies x/p1, x/p2, x/p3"),
			deny(tcp(ya, xb, 81)),
		}},
		{"both directions must allow", tableInput(
			mkPolicy("x", "a-out", sel("app", "a"), egressOnly, egressRule(nil, port("", 80))),
			mkPolicy("x", "b-in", sel("app", "b"), ingressRule(nil, port("", 81)))), []expect{
			because(deny(tcp(xa, xb, 80)), "selected for ingress by policy x/b-in"),
			because(deny(tcp(xa, xb, 81)), "selected for egress by policy x/a-out"),
			allow(tcp(xa, ya, 80)),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := Compile(tt.in)
			if len(rs.Warnings) > 0 {
				t.Errorf("warnings: %v", rs.Warnings)
			}
			for _, e := range tt.want {
				got, why := rs.Allows(e.pkt)
				if got != e.allow {
					t.Errorf("%s: allowed = %v (%s), want %v", e.pkt, got, why, e.allow)
				}
				if e.reason != "" && !strings.Contains(why.String(), e.reason) {
					t.Errorf("%s: reason %q does not say %q", e.pkt, why, e.reason)
				}
				if ref := refAllows(tt.in, e.pkt); ref != e.allow {
					t.Errorf("%s: the reference evaluator says %v", e.pkt, ref)
				}
			}
		})
	}
}

func TestCompileTargets(t *testing.T) {
	in := tableInput(mkPolicy("x", "deny", &metav1.LabelSelector{}))
	host := mkPod("x", "host", nodeAddr, nil)
	host.Spec.HostNetwork = true
	done := mkPod("x", "done", "10.0.1.9", nil)
	done.Status.Phase = corev1.PodSucceeded
	in.Pods = append(in.Pods,
		host, done,
		mkPod("x", "pending", "", nil),
		onNode(mkPod("x", "remote", "10.0.9.1", nil), "node-2"),
		mkPod("x", "dup", xa, nil), // a stale pod with x/a's address
	)
	rs := Compile(in)
	if len(rs.Warnings) != 1 || !strings.Contains(rs.Warnings[0], "x/a and x/dup") {
		t.Errorf("warnings = %q, want one about the shared address", rs.Warnings)
	}
	var keys []string
	for _, p := range rs.Pods {
		keys = append(keys, p.Key())
	}
	if want := []string{"x/a", "x/b", "y/a", "y/b"}; !slices.Equal(keys, want) {
		t.Errorf("local pods = %v, want %v (no hostNetwork, terminated, IP-less, remote or duplicate pods)", keys, want)
	}
	// The remote pod is isolated on its own node, not here.
	if ok, why := rs.Allows(tcp(outside, "10.0.9.1", 80)); !ok || why.Ingress.Kind != NotLocal {
		t.Errorf("to a remote pod: %v %s", ok, why)
	}
	// A terminated pod's address is no peer.
	in.Policies = append(in.Policies, mkPolicy("y", "from-x", &metav1.LabelSelector{},
		ingressRule(peers(nsPeer(sel(namespaceNameLabel, "x"))))))
	rs = Compile(in)
	if ok, _ := rs.Allows(tcp("10.0.1.9", ya, 80)); ok {
		t.Error("a terminated pod's address is allowed as a pod of x")
	}
	if ok, _ := rs.Allows(tcp(xa, ya, 80)); !ok {
		t.Error("x/a is not allowed as a pod of x")
	}
}

func TestCompileMergesEntries(t *testing.T) {
	// Three policies allow overlapping things; the merged entries are
	// disjoint and adjacent peers collapse into ranges.
	in := tableInput(
		mkPolicy("x", "p1", sel("app", "a"), ingressRule(peers(blockPeer("10.0.2.0/24")), portRange("", 80, 90))),
		mkPolicy("x", "p2", sel("app", "a"), ingressRule(peers(podPeer(sel("app", "b")), nsPeer(sel("team", "blue"))), portRange("", 85, 100))),
		mkPolicy("x", "p3", sel("app", "a"), ingressRule(peers(blockPeer("10.0.2.2/32")))),
	)
	rs := Compile(in)
	var got []string
	for _, e := range rs.Pods[0].Ingress.Allow {
		got = append(got, e.String())
	}
	want := []string{
		"10.0.1.2 tcp/85-100",
		"10.0.2.0 tcp/80-90",
		"10.0.2.1 tcp/80-100",
		"10.0.2.2 any",
		"10.0.2.3-10.0.2.255 tcp/80-90",
	}
	if !slices.Equal(got, want) {
		t.Errorf("entries of x/a:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCompileWarnings(t *testing.T) {
	bad := mkPolicy("x", "bad", &metav1.LabelSelector{},
		ingressRule(peers(blockPeer("not-a-cidr"), networkingv1.NetworkPolicyPeer{}, podPeer(selExpr("app", "Bogus")))),
		ingressRule(nil, protoOnly("ICMP"), portRange("", 90, 80)))
	rs := Compile(tableInput(bad))
	if len(rs.Warnings) != 5 {
		t.Errorf("warnings = %q, want 5", rs.Warnings)
	}
	// Invalid parts match nothing; the policy still isolates.
	if ok, _ := rs.Allows(tcp(ya, xa, 85)); ok {
		t.Error("an invalid rule allowed traffic")
	}
}

func TestSummary(t *testing.T) {
	rs := Compile(tableInput(
		mkPolicy("x", "deny", &metav1.LabelSelector{}, types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)),
		mkPolicy("x", "web", sel("app", "a"), ingressRule(nil, port("", 80))),
		mkPolicy("z", "elsewhere", &metav1.LabelSelector{}),
	))
	s := rs.Summary()
	b, _ := json.Marshal(s.Policies)
	want := `[{"namespace":"x","name":"deny","ingress":["x/a","x/b"],"egress":["x/a","x/b"]},` +
		`{"namespace":"x","name":"web","ingress":["x/a"],"egress":[]}]`
	if string(b) != want {
		t.Errorf("policies:\n%s\nwant:\n%s", b, want)
	}
	b, _ = json.Marshal(DropCount{Namespace: "x", Name: "a", Direction: Egress, Packets: 3, Bytes: 180})
	if want := `{"namespace":"x","name":"a","direction":"egress","packets":3,"bytes":180}`; string(b) != want {
		t.Errorf("drop count: %s, want %s", b, want)
	}
	if len(s.Pods) != 4 || !slices.Equal(s.Pods[0].Ingress, []string{"x/deny", "x/web"}) || s.Pods[0].IngressEntries != 1 {
		t.Errorf("pods: %+v", s.Pods)
	}
}
