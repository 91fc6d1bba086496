package tests

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestPolicy is the upstream Kubernetes network-policy model on weft: three
// daemons against a real kube-apiserver, namespaces x, y and z with pods a,
// b and c each spread over the nodes, and every scenario checks the whole
// reachability matrix (every pod to every pod on TCP and UDP ports 80 and
// 81) against the one package policytest's reference evaluator computes
// from the objects in the API. One cluster serves all subtests, in order.
func TestPolicy(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	c := newPolicyCluster(t, ctx)
	if t.Failed() {
		t.FailNow()
	}
	baseline := map[string]string{}
	for _, n := range c.nodes {
		tab, err := policyTable(n)
		if err != nil {
			t.Fatal(err)
		}
		baseline[n.Name] = tab
	}

	for _, sc := range policyScenarios(c) {
		ran, restored := false, false
		t.Run(sc.name, func(t *testing.T) {
			ran = true
			c.createPolicies(t, ctx, sc.policies)
			c.waitMatrix(t, ctx, "with the policies")
			c.deleteAllPolicies(t, ctx)
			restored = c.waitMatrix(t, ctx, "after deleting the policies")
		})
		// A scenario that -run leaves out changes nothing.
		if ran && !restored {
			t.Fatalf("scenario %q left the cluster without full reachability; the next ones would tell nothing", sc.name)
		}
	}
	t.Run("drops are counted and explained", func(t *testing.T) {
		testPolicyDropsExplained(t, ctx, c)
	})
	t.Run("why", func(t *testing.T) {
		testPolicyWhy(t, ctx, c)
	})
	t.Run("changes take effect within 2s", func(t *testing.T) {
		testPolicyTiming(t, ctx, c)
	})
	t.Run("no rule left behind", func(t *testing.T) {
		testPolicyLeftovers(t, ctx, c, baseline)
	})
}

// policyScenario is a set of policies applied at once.
type policyScenario struct {
	name     string
	policies []*networkingv1.NetworkPolicy
}

func policyScenarios(c *policyCluster) []policyScenario {
	yb := c.pod("y", "b").ip.String() + "/32"
	xa := c.pod("x", "a").ip.String() + "/32"
	return []policyScenario{
		{"default deny ingress", []*networkingv1.NetworkPolicy{
			netpol("x", "deny", metav1.LabelSelector{}, ingressOnly, nil, nil)}},
		{"default deny egress", []*networkingv1.NetworkPolicy{
			netpol("x", "deny", metav1.LabelSelector{}, egressOnly, nil, nil)}},
		{"default deny ingress and egress", []*networkingv1.NetworkPolicy{
			netpol("x", "deny", metav1.LabelSelector{}, bothTypes, nil, nil)}},
		{"allow all ingress", []*networkingv1.NetworkPolicy{
			netpol("x", "allow", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(nil)), nil)}},
		{"deny all then allow all ingress", []*networkingv1.NetworkPolicy{
			netpol("x", "deny", metav1.LabelSelector{}, ingressOnly, nil, nil),
			netpol("x", "allow", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(nil)), nil)}},
		{"deny all then allow all egress", []*networkingv1.NetworkPolicy{
			netpol("x", "deny", metav1.LabelSelector{}, egressOnly, nil, nil),
			netpol("x", "allow", metav1.LabelSelector{}, egressOnly, nil, egressRules(rule(nil)))}},
		{"podSelector matchLabels", []*networkingv1.NetworkPolicy{
			netpol("x", "a-from-b", podIs("a"), ingressOnly, ingressRules(rule(nil, peer(labelsOf("pod", "b"), nil))), nil)}},
		{"matchExpressions In", []*networkingv1.NetworkPolicy{
			netpol("x", "a-from-b-c", podIs("a"), ingressOnly,
				ingressRules(rule(nil, peer(selExpr("pod", metav1.LabelSelectorOpIn, "b", "c"), nil))), nil)}},
		{"matchExpressions NotIn", []*networkingv1.NetworkPolicy{
			netpol("x", "a-not-from-b", podIs("a"), ingressOnly,
				ingressRules(rule(nil, peer(selExpr("pod", metav1.LabelSelectorOpNotIn, "b"), nil))), nil)}},
		{"matchExpressions Exists on namespaces", []*networkingv1.NetworkPolicy{
			netpol("x", "a-from-teams", podIs("a"), ingressOnly,
				ingressRules(rule(nil, peer(nil, selExpr("team", metav1.LabelSelectorOpExists)))), nil)}},
		{"matchExpressions DoesNotExist on pods", []*networkingv1.NetworkPolicy{
			netpol("x", "a-from-non-backends", podIs("a"), ingressOnly,
				ingressRules(rule(nil, peer(selExpr("tier", metav1.LabelSelectorOpDoesNotExist), everything()))), nil)}},
		{"namespaceSelector", []*networkingv1.NetworkPolicy{
			netpol("x", "a-from-y", podIs("a"), ingressOnly, ingressRules(rule(nil, peer(nil, labelsOf("ns", "y")))), nil)}},
		{"podSelector and namespaceSelector in one peer", []*networkingv1.NetworkPolicy{
			netpol("x", "a-from-y-b", podIs("a"), ingressOnly,
				ingressRules(rule(nil, peer(labelsOf("pod", "b"), labelsOf("ns", "y")))), nil)}},
		{"podSelector and namespaceSelector in two peers", []*networkingv1.NetworkPolicy{
			netpol("x", "a-from-y-or-b", podIs("a"), ingressOnly,
				ingressRules(rule(nil, peer(labelsOf("pod", "b"), nil), peer(nil, labelsOf("ns", "y")))), nil)}},
		{"empty namespaceSelector", []*networkingv1.NetworkPolicy{
			netpol("x", "deny", metav1.LabelSelector{}, ingressOnly, nil, nil),
			netpol("x", "a-from-all-namespaces", podIs("a"), ingressOnly, ingressRules(rule(nil, peer(nil, everything()))), nil)}},
		{"empty namespaceSelector with podSelector", []*networkingv1.NetworkPolicy{
			netpol("x", "from-every-c", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(nil, peer(labelsOf("pod", "c"), everything()))), nil)}},
		{"ipBlock of the pod range", []*networkingv1.NetworkPolicy{
			netpol("x", "from-pods", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(nil, ipPeer(policyPodCIDR))), nil)}},
		{"ipBlock with except", []*networkingv1.NetworkPolicy{
			netpol("x", "from-pods-but-y-b", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(nil, ipPeer(policyPodCIDR, yb))), nil)}},
		{"port by number", []*networkingv1.NetworkPolicy{
			netpol("x", "tcp-80", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(ports(portNum(corev1.ProtocolTCP, 80)))), nil)}},
		{"named port", []*networkingv1.NetworkPolicy{
			netpol("x", "serve-81-udp", metav1.LabelSelector{}, ingressOnly,
				ingressRules(rule(ports(portName(corev1.ProtocolUDP, "serve-81-udp")))), nil)}},
		{"named port resolved per destination pod", []*networkingv1.NetworkPolicy{
			netpol("y", "alt-tcp", metav1.LabelSelector{}, ingressOnly,
				ingressRules(rule(ports(portName(corev1.ProtocolTCP, "alt-tcp")))), nil)}},
		{"endPort range from a namespace", []*networkingv1.NetworkPolicy{
			netpol("x", "a-tcp-80-81-from-z", podIs("a"), ingressOnly,
				ingressRules(rule(ports(portRange(corev1.ProtocolTCP, 80, 81)), peer(nil, labelsOf("ns", "z")))), nil)}},
		{"protocol UDP only", []*networkingv1.NetworkPolicy{
			netpol("y", "udp", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(ports(protoOnly(corev1.ProtocolUDP)))), nil)}},
		{"protocol TCP only on one port", []*networkingv1.NetworkPolicy{
			netpol("y", "c-tcp-81-from-z", podIs("c"), ingressOnly,
				ingressRules(rule(ports(portNum(corev1.ProtocolTCP, 81)), peer(nil, labelsOf("ns", "z")))), nil)}},
		{"several policies are a union", []*networkingv1.NetworkPolicy{
			netpol("x", "a-from-y", podIs("a"), ingressOnly, ingressRules(rule(nil, peer(nil, labelsOf("ns", "y")))), nil),
			netpol("x", "a-from-z-c", podIs("a"), ingressOnly,
				ingressRules(rule(ports(portNum(corev1.ProtocolUDP, 80)), peer(labelsOf("pod", "c"), labelsOf("ns", "z")))), nil)}},
		{"policyTypes Egress only", []*networkingv1.NetworkPolicy{
			netpol("x", "a-to-y-b", podIs("a"), egressOnly, nil, egressRules(rule(nil, peer(labelsOf("pod", "b"), labelsOf("ns", "y")))))}},
		{"policyTypes Ingress only ignores egress rules", []*networkingv1.NetworkPolicy{
			netpol("x", "a-from-z", podIs("a"), ingressOnly,
				ingressRules(rule(nil, peer(nil, labelsOf("ns", "z")))),
				egressRules(rule(nil, peer(labelsOf("pod", "none"), nil))))}},
		{"policyTypes Ingress and Egress", []*networkingv1.NetworkPolicy{
			netpol("x", "b-within-x", podIs("b"), bothTypes,
				ingressRules(rule(nil, peer(everything(), nil))), egressRules(rule(nil, peer(everything(), nil))))}},
		{"policyTypes defaulted from egress rules", []*networkingv1.NetworkPolicy{
			netpol("x", "c-with-y", podIs("c"), nil,
				ingressRules(rule(nil, peer(nil, labelsOf("ns", "y")))), egressRules(rule(nil, peer(nil, labelsOf("ns", "y")))))}},
		{"egress to a namespace", []*networkingv1.NetworkPolicy{
			netpol("x", "to-z", metav1.LabelSelector{}, egressOnly, nil, egressRules(rule(nil, peer(nil, labelsOf("ns", "z")))))}},
		{"egress denied but DNS-like UDP allowed", []*networkingv1.NetworkPolicy{
			netpol("x", "udp-81-only", metav1.LabelSelector{}, egressOnly, nil, egressRules(rule(ports(portNum(corev1.ProtocolUDP, 81)))))}},
		{"egress to a named port of the destination", []*networkingv1.NetworkPolicy{
			netpol("y", "to-serve-80-tcp", metav1.LabelSelector{}, egressOnly, nil,
				egressRules(rule(ports(portName(corev1.ProtocolTCP, "serve-80-tcp")))))}},
		{"egress ipBlock with except", []*networkingv1.NetworkPolicy{
			netpol("z", "to-pods-but-x-a", metav1.LabelSelector{}, egressOnly, nil, egressRules(rule(nil, ipPeer(policyPodCIDR, xa))))}},
		{"policies in several namespaces", []*networkingv1.NetworkPolicy{
			netpol("x", "deny", metav1.LabelSelector{}, ingressOnly, nil, nil),
			netpol("y", "deny", metav1.LabelSelector{}, ingressOnly, nil, nil),
			netpol("x", "from-z", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(nil, peer(nil, labelsOf("ns", "z")))), nil),
			netpol("y", "from-z-a", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(nil, peer(labelsOf("pod", "a"), labelsOf("ns", "z")))), nil)}},
		{"a policy selecting no pods", []*networkingv1.NetworkPolicy{
			netpol("x", "deny-none", podIs("none"), bothTypes, nil, nil)}},
		{"deny all then allow from one pod", []*networkingv1.NetworkPolicy{
			netpol("z", "deny", metav1.LabelSelector{}, ingressOnly, nil, nil),
			netpol("z", "c-from-x-a", podIs("c"), ingressOnly, ingressRules(rule(nil, peer(labelsOf("pod", "a"), labelsOf("ns", "x")))), nil)}},
		{"egress of the source and ingress of the destination together", []*networkingv1.NetworkPolicy{
			netpol("x", "a-tcp-to-y-a", podIs("a"), egressOnly, nil,
				egressRules(rule(ports(protoOnly(corev1.ProtocolTCP)), peer(labelsOf("pod", "a"), labelsOf("ns", "y"))))),
			netpol("y", "a-80-from-x", podIs("a"), ingressOnly,
				ingressRules(rule(ports(portNum(corev1.ProtocolTCP, 80), portNum(corev1.ProtocolUDP, 80)), peer(nil, labelsOf("ns", "x")))), nil)}},
		{"pods to isolate chosen by matchExpressions", []*networkingv1.NetworkPolicy{
			netpol("x", "deny-egress-but-a", *selExpr("pod", metav1.LabelSelectorOpNotIn, "a"), egressOnly, nil, nil)}},
		{"ipBlock of one pod on another node", []*networkingv1.NetworkPolicy{
			netpol("y", "c-from-x-a-ip", podIs("c"), ingressOnly, ingressRules(rule(nil, ipPeer(xa))), nil)}},
		{"UDP endPort from expressions on namespaces and pods", []*networkingv1.NetworkPolicy{
			netpol("z", "udp-80-81", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(
				ports(portRange(corev1.ProtocolUDP, 80, 81)),
				peer(selExpr("pod", metav1.LabelSelectorOpIn, "a", "b"), selExpr("ns", metav1.LabelSelectorOpNotIn, "z")))), nil)}},
		{"egress to backends anywhere", []*networkingv1.NetworkPolicy{
			netpol("y", "to-backends", metav1.LabelSelector{}, egressOnly, nil,
				egressRules(rule(nil, peer(labelsOf("tier", "backend"), everything()))))}},
	}
}

// pod finds a pod of the model.
func (c *policyCluster) pod(ns, name string) *policyPod {
	for _, p := range c.pods {
		if p.ns == ns && p.name == name {
			return p
		}
	}
	panic("no pod " + ns + "/" + name)
}

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	bothTypes   = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

func netpol(ns, name string, sel metav1.LabelSelector, types []networkingv1.PolicyType,
	in []networkingv1.NetworkPolicyIngressRule, out []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: sel, PolicyTypes: types, Ingress: in, Egress: out},
	}
}

// policyRule is the part ingress and egress rules share.
type policyRule struct {
	ports []networkingv1.NetworkPolicyPort
	peers []networkingv1.NetworkPolicyPeer
}

func rule(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) policyRule {
	return policyRule{ports, peers}
}

func ingressRules(rules ...policyRule) []networkingv1.NetworkPolicyIngressRule {
	out := []networkingv1.NetworkPolicyIngressRule{}
	for _, r := range rules {
		out = append(out, networkingv1.NetworkPolicyIngressRule{Ports: r.ports, From: r.peers})
	}
	return out
}

func egressRules(rules ...policyRule) []networkingv1.NetworkPolicyEgressRule {
	out := []networkingv1.NetworkPolicyEgressRule{}
	for _, r := range rules {
		out = append(out, networkingv1.NetworkPolicyEgressRule{Ports: r.ports, To: r.peers})
	}
	return out
}

func peer(pods, namespaces *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: pods, NamespaceSelector: namespaces}
}

func ipPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func podIs(name string) metav1.LabelSelector { return *labelsOf("pod", name) }

func labelsOf(key, value string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{key: value}}
}

func selExpr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func ports(p ...networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyPort { return p }

func portNum(proto corev1.Protocol, port int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(port)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

func portName(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

func portRange(proto corev1.Protocol, from, to int32) networkingv1.NetworkPolicyPort {
	p := portNum(proto, from)
	p.EndPort = &to
	return p
}

func protoOnly(proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto}
}
