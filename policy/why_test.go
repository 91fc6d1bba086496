package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// whyInput: namespaces x (team=blue) and y (no team); pods x/a (app=web,
// port http=8080), x/b and y/b (app=db) on this node, x/r on node-2.
func whyInput() Input {
	return Input{
		NodeName:  testNode,
		NodeAddrs: []netip.Addr{addr("10.0.100.1")},
		Namespaces: []*corev1.Namespace{
			mkNS("x", map[string]string{"team": "blue"}),
			mkNS("y", nil),
		},
		Pods: []*corev1.Pod{
			mkPod("x", "a", "10.0.1.1", map[string]string{"app": "web"}, namedPort("http", 8080, corev1.ProtocolTCP)),
			mkPod("x", "b", "10.0.1.2", map[string]string{"app": "db"}),
			mkPod("y", "b", "10.0.2.2", map[string]string{"app": "db"}),
			onNode(mkPod("x", "r", "10.0.1.9", map[string]string{"app": "client"}), "node-2"),
		},
		Policies: []*networkingv1.NetworkPolicy{
			// x/a takes TCP 80 and its port http from the blue namespaces'
			// db pods, and anything from 192.168.0.0/16 but 192.168.1.0/24.
			mkPolicy("x", "web", sel("app", "web"),
				ingressRule(peers(nsPodPeer(sel("team", "blue"), sel("app", "db"))), port(corev1.ProtocolTCP, 80), namedPolicyPort("", "http")),
				ingressRule(peers(blockPeer("192.168.0.0/16", "192.168.1.0/24")))),
			// x/b is isolated for ingress with no rule.
			mkPolicy("x", "deny-db", sel("app", "db"), types(networkingv1.PolicyTypeIngress)),
			// x/r may send only to pods of x on UDP 53.
			mkPolicy("x", "client", sel("app", "client"), types(networkingv1.PolicyTypeEgress),
				egressRule(peers(podPeer(&metav1.LabelSelector{})), port(corev1.ProtocolUDP, 53))),
		},
	}
}

func TestWhy(t *testing.T) {
	in := whyInput()
	e := NewExplainer(in, Compile(in))
	tests := []struct {
		name    string
		pkt     Packet
		allowed bool
		reason  string
		nearest *NearMiss
	}{
		{"allowed by port", tcp("10.0.1.2", "10.0.1.1", 80), true,
			"egress: pod x/b is selected by no policy for egress; ingress of pod x/a allowed by x/web ingress[0]", nil},
		{"allowed by named port", tcp("10.0.1.2", "10.0.1.1", 8080), true,
			"egress: pod x/b is selected by no policy for egress; ingress of pod x/a allowed by x/web ingress[0]", nil},
		{"denied by port", tcp("10.0.1.2", "10.0.1.1", 81), false,
			"default deny: pod x/a is selected for ingress by policy x/web and no rule matched; nearest rule x/web ingress[0]: " +
				"port 81/TCP not in [80/TCP, http/TCP (8080 on pod x/a)]",
			&NearMiss{RuleRef{"x/web", 0}, []string{"port 81/TCP not in [80/TCP, http/TCP (8080 on pod x/a)]"}}},
		{"denied by namespace label", tcp("10.0.2.2", "10.0.1.1", 80), false,
			"default deny: pod x/a is selected for ingress by policy x/web and no rule matched; nearest rule x/web ingress[0]: " +
				"namespace y lacks label team=blue",
			&NearMiss{RuleRef{"x/web", 0}, []string{"namespace y lacks label team=blue"}}},
		{"loopback", tcp("10.0.1.1", "10.0.1.1", 80), true,
			"egress: pod x/a talks to itself; ingress: pod x/a talks to itself", nil},
		{"denied by ipBlock except", udp("192.168.1.7", "10.0.1.1", 53), false,
			"default deny: pod x/a is selected for ingress by policy x/web and no rule matched; nearest rule x/web ingress[1]: " +
				"192.168.1.7 is in ipBlock 192.168.0.0/16 but excepted by 192.168.1.0/24",
			&NearMiss{RuleRef{"x/web", 1}, []string{"192.168.1.7 is in ipBlock 192.168.0.0/16 but excepted by 192.168.1.0/24"}}},
		{"allowed by ipBlock", udp("192.168.2.7", "10.0.1.1", 53), true,
			"egress: not a pod of this node; ingress of pod x/a allowed by x/web ingress[1]", nil},
		{"outside address and ICMP", Packet{Src: addr("10.9.9.9"), Dst: addr("10.0.1.1"), Proto: ProtoICMP}, false,
			"default deny: pod x/a is selected for ingress by policy x/web and no rule matched; nearest rule x/web ingress[1]: " +
				"10.9.9.9 not in ipBlock 192.168.0.0/16",
			&NearMiss{RuleRef{"x/web", 1}, []string{"10.9.9.9 not in ipBlock 192.168.0.0/16"}}},
		{"no rules", tcp("10.0.1.1", "10.0.1.2", 5432), false,
			"default deny: pod x/b is selected for ingress by policy x/deny-db and no rule matched; policy x/deny-db has no ingress rules", nil},
		{"from this node", tcp("10.0.100.1", "10.0.1.2", 5432), true,
			"egress: not a pod of this node; ingress of pod x/b allowed: traffic from this node", nil},
		{"not isolated", tcp("10.0.1.1", "10.0.2.2", 5432), true,
			"egress: pod x/a is selected by no policy for egress; ingress: pod y/b is selected by no policy for ingress", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := e.Why(tt.pkt)
			if v.Allowed != tt.allowed || v.Reason != tt.reason {
				t.Errorf("Why(%s) = %v\n  %s\nwant %v\n  %s", tt.pkt, v.Allowed, v.Reason, tt.allowed, tt.reason)
			}
			if tt.nearest != nil && !reflect.DeepEqual(v.Ingress.Nearest, tt.nearest) {
				t.Errorf("nearest rule %+v, want %+v", v.Ingress.Nearest, tt.nearest)
			}
			if ok, _ := e.rules.Allows(tt.pkt); ok != v.Allowed {
				t.Errorf("Why says %v, the rule set %v", v.Allowed, ok)
			}
		})
	}
}

func TestWhyClusterJudgesEachEndOnItsNode(t *testing.T) {
	in := whyInput()
	e := NewExplainer(in, Compile(in))
	tests := []struct {
		name                       string
		pkt                        Packet
		allowed                    bool
		egressNode, ingressNode    string
		egressDecision, ingressDec DecisionKind
		reasonHas                  string
	}{
		{"remote source denied by its egress", tcp("10.0.1.9", "10.0.1.1", 80), false, "node-2", testNode, DefaultDeny, DefaultDeny,
			"default deny: pod x/r is selected for egress by policy x/client and no rule matched; nearest rule x/client egress[0]: port 80/TCP not in [53/UDP]"},
		{"remote source allowed out, denied in", udp("10.0.1.9", "10.0.1.2", 53), false, "node-2", testNode, AllowedByPolicy, DefaultDeny,
			"default deny: pod x/b is selected for ingress by policy x/deny-db"},
		{"outside destination", udp("10.0.1.9", "8.8.8.8", 53), false, "node-2", "", DefaultDeny, NotAPod,
			"nearest rule x/client egress[0]: 8.8.8.8 is no pod's address, and the peer selects pods"},
		{"outside source", tcp("8.8.8.8", "10.0.2.2", 80), true, "", testNode, NotAPod, NotIsolated,
			"egress: 8.8.8.8 is no pod's address; no policy judges it; ingress: pod y/b is selected by no policy for ingress"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := e.WhyCluster(tt.pkt, nil)
			if v.Allowed != tt.allowed || v.Egress.Node != tt.egressNode || v.Ingress.Node != tt.ingressNode ||
				v.Egress.Decision != tt.egressDecision || v.Ingress.Decision != tt.ingressDec {
				t.Errorf("WhyCluster(%s) = %v, egress %s by %q, ingress %s by %q; want %v, %s by %q, %s by %q",
					tt.pkt, v.Allowed, v.Egress.Decision, v.Egress.Node, v.Ingress.Decision, v.Ingress.Node,
					tt.allowed, tt.egressDecision, tt.egressNode, tt.ingressDec, tt.ingressNode)
			}
			if !strings.Contains(v.Reason, tt.reasonHas) {
				t.Errorf("reason %q lacks %q", v.Reason, tt.reasonHas)
			}
		})
	}
}

func TestWhyExplainsSelectors(t *testing.T) {
	in := whyInput()
	in.Policies = []*networkingv1.NetworkPolicy{
		mkPolicy("x", "sel", sel("app", "web"),
			ingressRule(peers(podPeer(sel("app", "web")))),
			ingressRule(peers(nsPeer(selExpr("team", metav1.LabelSelectorOpIn, "red", "green")))),
			ingressRule(peers(podPeer(selExpr("tier", metav1.LabelSelectorOpExists)))),
		),
	}
	e := NewExplainer(in, Compile(in))
	tests := []struct {
		pkt   Packet
		rule  int
		lacks []string
	}{
		// From x/b: the pod selector is one label off.
		{tcp("10.0.1.2", "10.0.1.1", 80), 0, []string{"pod x/b does not match podSelector app=web (it has app=db)"}},
		// From y/b: rules 0 and 2 lack two things, rule 1 one.
		{tcp("10.0.2.2", "10.0.1.1", 80), 1, []string{"namespace y lacks label team (namespaceSelector wants team in (green,red))"}},
	}
	for _, tt := range tests {
		v := e.Why(tt.pkt)
		if v.Allowed {
			t.Errorf("%s allowed: %s", tt.pkt, v.Reason)
			continue
		}
		if n := v.Ingress.Nearest; n == nil || n.Rule != tt.rule || !reflect.DeepEqual(n.Lacks, tt.lacks) {
			t.Errorf("%s: nearest %+v, want rule %d lacking %q", tt.pkt, n, tt.rule, tt.lacks)
		}
	}
	got := selectorLacks("namespace y", "namespaceSelector", selExpr("team", metav1.LabelSelectorOpIn, "red", "green"), map[string]string{})
	if want := []string{"namespace y lacks label team (namespaceSelector wants team in (green,red))"}; !reflect.DeepEqual(got, want) {
		t.Errorf("selectorLacks = %q, want %q", got, want)
	}
}

func TestVerdictJSONRoundTrip(t *testing.T) {
	in := whyInput()
	v := NewExplainer(in, Compile(in)).WhyCluster(tcp("10.0.2.2", "10.0.1.1", 80), nil)
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"proto":"tcp"`, `"decision":"denied"`, `"nearest":{"policy":"x/web","rule":0,"lacks":[`, `"allowed":false`} {
		if !strings.Contains(string(b), field) {
			t.Errorf("JSON %s lacks %s", b, field)
		}
	}
	var back Verdict
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, v) {
		t.Errorf("round trip changed the verdict:\n%+v\n%+v", back, v)
	}
}

func TestResolve(t *testing.T) {
	in := whyInput()
	in.Pods = append(in.Pods, func() *corev1.Pod {
		p := mkPod("y", "dual", "10.0.2.5", nil)
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::5"})
		return p
	}(), func() *corev1.Pod { p := mkPod("y", "host", "10.0.100.1", nil); p.Spec.HostNetwork = true; return p }())
	e := NewExplainer(in, Compile(in))
	tests := []struct {
		src, dst string
		want     string // "src dst", or "error"
	}{
		{"x/a", "y/b", "10.0.1.1 10.0.2.2"},
		{"x/a", "192.168.1.1", "10.0.1.1 192.168.1.1"},
		{"y/dual", "fd00::9", "fd00::5 fd00::9"},
		{"y/dual", "x/a", "10.0.2.5 10.0.1.1"},
		{"x/a", "fd00::9", "error"},
		{"x/nope", "y/b", "error"},
		{"y/host", "y/b", "error"},
		{"nonsense", "y/b", "error"},
	}
	for _, tt := range tests {
		s, d, err := e.Resolve(tt.src, tt.dst)
		got := s.String() + " " + d.String()
		if err != nil {
			got = "error"
		}
		if got != tt.want {
			t.Errorf("Resolve(%q, %q) = %s (%v), want %s", tt.src, tt.dst, got, err, tt.want)
		}
	}
}

func TestParsePortProto(t *testing.T) {
	tests := []struct {
		in   string
		want string // proto/port, or "error"
	}{
		{"80/tcp", "tcp/80"},
		{"53/UDP", "udp/53"},
		{"80", "tcp/80"},
		{"9/sctp", "sctp/9"},
		{"icmp", "icmp/0"},
		{"ICMPv6", "icmpv6/0"},
		{"47", "tcp/47"},
		{"proto-47", "proto-47/0"},
		{"tcp", "error"},
		{"0/tcp", "error"},
		{"70000/tcp", "error"},
		{"80/icmp", "error"},
		{"80/tpc", "error"},
		{"any", "error"},
		{"", "error"},
	}
	for _, tt := range tests {
		proto, port, err := ParsePortProto(tt.in)
		got := fmt.Sprintf("%s/%d", proto, port)
		if err != nil {
			got = "error"
		}
		if got != tt.want {
			t.Errorf("ParsePortProto(%q) = %s (%v), want %s", tt.in, got, err, tt.want)
		}
	}
}

func FuzzParsePortProto(f *testing.F) {
	for _, s := range []string{"80/tcp", "53/udp", "icmp", "80", "proto-1", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		proto, port, err := ParsePortProto(s)
		if err != nil {
			return
		}
		if proto.HasPorts() != (port != 0) {
			t.Fatalf("ParsePortProto(%q) = %s %d: a port exactly when the protocol has ports", s, proto, port)
		}
		again, port2, err := ParsePortProto(proto.String() + "")
		if !proto.HasPorts() && (err != nil || again != proto || port2 != 0) {
			t.Fatalf("%s does not parse back: %v", proto, err)
		}
	})
}

// TestWhyNamesClusterRule: a packet denied by an Admin rule and one denied
// by a Baseline rule each say which ClusterNetworkPolicy and rule.
func TestWhyNamesClusterRule(t *testing.T) {
	in := Input{
		NodeName:   testNode,
		Namespaces: []*corev1.Namespace{mkNS("x", nil), mkNS("y", nil)},
		Pods: []*corev1.Pod{
			mkPod("x", "a", "10.0.1.1", nil),
			mkPod("y", "b", "10.0.2.1", nil),
		},
		ClusterPolicies: []*cnp.ClusterNetworkPolicy{
			withIngress(mkCNP("guard", cnp.AdminTier, 3, "y"), "no-81", cnp.ClusterNetworkPolicyRuleActionDeny, "x", 81, 81),
			withIngress(mkCNP("base", cnp.BaselineTier, 7, "y"), "", cnp.ClusterNetworkPolicyRuleActionDeny, "x", 0, 0),
			withIngress(mkCNP("ok", cnp.AdminTier, 1, "y"), "web", cnp.ClusterNetworkPolicyRuleActionAccept, "x", 80, 80),
		},
	}
	e := NewExplainer(in, Compile(in))
	for _, tt := range []struct {
		port    uint16
		allowed bool
		kind    DecisionKind
		reason  string
	}{
		{81, false, DeniedByCluster, `ingress of pod y/b denied by Admin ClusterNetworkPolicy guard (priority 3) ingress[0] "no-81"`},
		{82, false, DeniedByCluster, `ingress of pod y/b denied by Baseline ClusterNetworkPolicy base (priority 7) ingress[0]`},
		{80, true, AcceptedByCluster, `ingress of pod y/b accepted by Admin ClusterNetworkPolicy ok (priority 1) ingress[0] "web"`},
	} {
		v := e.Why(tcp("10.0.1.1", "10.0.2.1", tt.port))
		if v.Allowed != tt.allowed || v.Ingress.Decision != tt.kind || v.Ingress.Cluster == nil {
			t.Errorf("port %d: allowed %v, ingress %s, cluster %+v; want %v, %s", tt.port, v.Allowed, v.Ingress.Decision, v.Ingress.Cluster, tt.allowed, tt.kind)
		}
		if !strings.Contains(v.Reason, tt.reason) {
			t.Errorf("port %d: reason %q, want it to hold %q", tt.port, v.Reason, tt.reason)
		}
	}
}
