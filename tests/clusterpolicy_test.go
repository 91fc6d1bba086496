package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"
)

// TestClusterPolicy is the policy model of TestPolicy with
// ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2, the upstream
// CRD of the pinned sigs.k8s.io/network-policy-api installed into the real
// kube-apiserver): every scenario checks the whole reachability matrix
// against the one the reference evaluator computes from the objects in the
// API, tiers included. One cluster serves all subtests, in order.
func TestClusterPolicy(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
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
	c.installClusterPolicyCRD(t, ctx)

	for _, sc := range clusterPolicyScenarios(c) {
		ran, restored := false, false
		t.Run(sc.name, func(t *testing.T) {
			ran = true
			c.createPolicies(t, ctx, sc.policies)
			c.createClusterPolicies(t, ctx, sc.cluster)
			c.waitMatrix(t, ctx, "with the policies")
			c.deleteAllClusterPolicies(t, ctx)
			c.deleteAllPolicies(t, ctx)
			restored = c.waitMatrix(t, ctx, "after deleting the policies")
		})
		if ran && !restored {
			t.Fatalf("scenario %q left the cluster without full reachability; the next ones would tell nothing", sc.name)
		}
	}
	t.Run("drop reasons name the rule", func(t *testing.T) {
		testClusterPolicyDrops(t, ctx, c)
	})
	t.Run("updates take effect within 2s", func(t *testing.T) {
		testClusterPolicyTiming(t, ctx, c)
	})
	t.Run("no rule left behind", func(t *testing.T) {
		c.createClusterPolicies(t, ctx, []*cnp.ClusterNetworkPolicy{
			cnpOf("deny-x", cnp.AdminTier, 1, subjectNS("x"), inRules(inRule("all", deny, fromNS(everything()))), nil),
			cnpOf("deny-y", cnp.BaselineTier, 1, subjectNS("y"), nil, egRules(egRule("all", deny, toNets("0.0.0.0/0")))),
		})
		c.waitMatrix(t, ctx, "with two ClusterNetworkPolicies")
		c.deleteAllClusterPolicies(t, ctx)
		testPolicyLeftovers(t, ctx, c, baseline)
	})
}

// installClusterPolicyCRD creates the upstream CRD of the module version
// in go.mod (its experimental channel, which adds nodes peers and named
// ports) and waits until every daemon watches ClusterNetworkPolicies.
func (c *policyCluster) installClusterPolicyCRD(t *testing.T, ctx context.Context) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("find the network-policy-api module (go mod download): %v", err)
	}
	path := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "experimental", "policy.networking.k8s.io_clusternetworkpolicies.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var obj unstructured.Unstructured
	if err := yaml.Unmarshal(data, &obj.Object); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	dyn, err := dynamic.NewForConfig(c.rest)
	if err != nil {
		t.Fatal(err)
	}
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if _, err := crds.Create(ctx, &obj, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the ClusterNetworkPolicy CRD: %v", err)
	}
	c.cnp, err = cnpclient.NewForConfig(c.rest)
	if err != nil {
		t.Fatal(err)
	}
	poll(t, ctx, func() error {
		if _, err := c.cnp.PolicyV1alpha2().ClusterNetworkPolicies().List(ctx, metav1.ListOptions{}); err != nil {
			return fmt.Errorf("list ClusterNetworkPolicies: %w", err)
		}
		for _, n := range c.nodes {
			st, err := policyStatus(ctx, n)
			if err != nil {
				return err
			}
			if !st.ClusterPolicies {
				return fmt.Errorf("%s does not watch ClusterNetworkPolicies yet", n.Name)
			}
		}
		return nil
	})
}

func (c *policyCluster) createClusterPolicies(t *testing.T, ctx context.Context, pols []*cnp.ClusterNetworkPolicy) {
	t.Helper()
	for _, p := range pols {
		if _, err := c.cnp.PolicyV1alpha2().ClusterNetworkPolicies().Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create ClusterNetworkPolicy %s: %v", p.Name, err)
		}
	}
}

func (c *policyCluster) deleteAllClusterPolicies(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := c.cnp.PolicyV1alpha2().ClusterNetworkPolicies().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatalf("delete the ClusterNetworkPolicies: %v", err)
	}
}

func (c *policyCluster) updateClusterPolicy(t *testing.T, ctx context.Context, name string, change func(*cnp.ClusterNetworkPolicy)) {
	t.Helper()
	p, err := c.cnp.PolicyV1alpha2().ClusterNetworkPolicies().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	change(p)
	if _, err := c.cnp.PolicyV1alpha2().ClusterNetworkPolicies().Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update ClusterNetworkPolicy %s: %v", name, err)
	}
}

type clusterScenario struct {
	name     string
	policies []*networkingv1.NetworkPolicy
	cluster  []*cnp.ClusterNetworkPolicy
}

const (
	accept = cnp.ClusterNetworkPolicyRuleActionAccept
	deny   = cnp.ClusterNetworkPolicyRuleActionDeny
	pass   = cnp.ClusterNetworkPolicyRuleActionPass
)

func clusterPolicyScenarios(c *policyCluster) []clusterScenario {
	allowAllIn := func(ns string) *networkingv1.NetworkPolicy {
		return netpol(ns, "allow-all-in", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(nil)), nil)
	}
	denyAllIn := func(ns string) *networkingv1.NetworkPolicy {
		return netpol(ns, "deny-all-in", metav1.LabelSelector{}, ingressOnly, nil, nil)
	}
	yb := c.pod("y", "b").ip.String() + "/32"
	xa := c.pod("x", "a").ip.String() + "/32"
	return []clusterScenario{
		{"admin deny from a namespace", nil, []*cnp.ClusterNetworkPolicy{
			cnpOf("x-not-from-y", cnp.AdminTier, 10, subjectNS("x"), inRules(inRule("y", deny, fromNS(nsIs("y")))), nil)}},
		{"admin deny beats a NetworkPolicy allow", []*networkingv1.NetworkPolicy{allowAllIn("x")}, []*cnp.ClusterNetworkPolicy{
			cnpOf("x-no-tcp80-from-y", cnp.AdminTier, 10, subjectNS("x"), inRules(inRule("", deny, fromNS(nsIs("y")), tcpPort(80))), nil)}},
		{"admin accept beats a NetworkPolicy deny", []*networkingv1.NetworkPolicy{denyAllIn("x")}, []*cnp.ClusterNetworkPolicy{
			cnpOf("x-from-z", cnp.AdminTier, 10, subjectNS("x"), inRules(inRule("z", accept, fromNS(nsIs("z")))), nil)}},
		{"admin egress accept beats a NetworkPolicy egress deny", []*networkingv1.NetworkPolicy{
			netpol("y", "deny-out", metav1.LabelSelector{}, egressOnly, nil, nil)}, []*cnp.ClusterNetworkPolicy{
			cnpOf("y-to-x-81", cnp.AdminTier, 3, subjectNS("y"), nil, egRules(egRule("", accept, toNS(nsIs("x")), tcpPort(81), udpPort(81))))}},
		{"pass defers to NetworkPolicy", []*networkingv1.NetworkPolicy{
			netpol("x", "tcp80-from-y", metav1.LabelSelector{}, ingressOnly, ingressRules(rule(ports(portNum(corev1.ProtocolTCP, 80)), peer(nil, labelsOf("ns", "y")))), nil)},
			[]*cnp.ClusterNetworkPolicy{
				cnpOf("a-pass-y", cnp.AdminTier, 1, subjectNS("x"), inRules(inRule("", pass, fromNS(nsIs("y")))), nil),
				cnpOf("b-deny-all", cnp.AdminTier, 2, subjectNS("x"), inRules(inRule("", deny, fromNS(everything()))), nil),
			}},
		{"pass without NetworkPolicy falls to the baseline", nil, []*cnp.ClusterNetworkPolicy{
			cnpOf("pass-y-udp", cnp.AdminTier, 1, subjectNS("x"), inRules(inRule("", pass, fromNS(nsIs("y")), udpAll()), inRule("", accept, fromNS(nsIs("y")))), nil),
			cnpOf("base-deny", cnp.BaselineTier, 1, subjectNS("x"), inRules(inRule("", deny, fromNS(everything()))), nil),
		}},
		{"baseline deny only where no NetworkPolicy selects", []*networkingv1.NetworkPolicy{
			netpol("y", "a-open", podIs("a"), ingressOnly, ingressRules(rule(nil)), nil)}, []*cnp.ClusterNetworkPolicy{
			cnpOf("not-from-z", cnp.BaselineTier, 5, subjectNS("y"), inRules(inRule("", deny, fromNS(nsIs("z")))), nil)}},
		{"baseline egress deny only where no egress NetworkPolicy selects", []*networkingv1.NetworkPolicy{
			netpol("x", "a-out", podIs("a"), egressOnly, nil, egressRules(rule(nil)))}, []*cnp.ClusterNetworkPolicy{
			cnpOf("x-not-to-z", cnp.BaselineTier, 5, subjectNS("x"), nil, egRules(egRule("", deny, toNS(nsIs("z")))))}},
		{"priorities order the admin tier", nil, []*cnp.ClusterNetworkPolicy{
			cnpOf("z-deny", cnp.AdminTier, 20, subjectNS("z"), inRules(inRule("", deny, fromNS(nsIs("x")))), nil),
			cnpOf("z-accept-a", cnp.AdminTier, 5, subjectPods(nsIs("z"), labelsOf("pod", "a")), inRules(inRule("", accept, fromNS(nsIs("x")), tcpPort(80))), nil),
		}},
		{"priorities order the baseline tier", nil, []*cnp.ClusterNetworkPolicy{
			cnpOf("base-accept-x", cnp.BaselineTier, 1, subjectNS("y"), inRules(inRule("", accept, fromNS(nsIs("x")))), nil),
			cnpOf("base-deny-all", cnp.BaselineTier, 2, subjectNS("y"), inRules(inRule("", deny, fromNS(everything()))), nil),
		}},
		{"rules in order within a policy", nil, []*cnp.ClusterNetworkPolicy{
			cnpOf("b-udp-only", cnp.AdminTier, 7, subjectPods(everything(), labelsOf("pod", "b")), inRules(
				inRule("udp", accept, fromNS(everything()), udpAll()),
				inRule("rest", deny, fromNS(everything()))), nil),
		}},
		{"subject and peers by namespace and pod labels", nil, []*cnp.ClusterNetworkPolicy{
			cnpOf("backends", cnp.AdminTier, 4, subjectPods(labelsOf("team", "blue"), labelsOf("tier", "backend")),
				inRules(inRule("", deny, fromPods(labelsOf("ns", "z"), selExpr("pod", metav1.LabelSelectorOpIn, "a", "c")))), nil),
		}},
		{"egress deny to networks and a port range", nil, []*cnp.ClusterNetworkPolicy{
			cnpOf("z-out", cnp.AdminTier, 4, subjectNS("z"), nil, egRules(egRule("", deny, toNets(yb, xa), tcpRange(80, 81), udpPort(81)))),
		}},
		{"named port of the destination", nil, []*cnp.ClusterNetworkPolicy{
			cnpOf("x-alt", cnp.AdminTier, 4, subjectNS("x"), inRules(inRule("", deny, fromNS(nsIs("y")), namedPort("alt-tcp"))), nil),
			cnpOf("y-out-alt", cnp.AdminTier, 5, subjectNS("y"), nil, egRules(egRule("", deny, toNS(nsIs("z")), namedPort("alt-tcp")))),
		}},
		{"egress deny beats the destination's ingress accept", nil, []*cnp.ClusterNetworkPolicy{
			cnpOf("z-not-to-y", cnp.AdminTier, 9, subjectNS("z"), nil, egRules(egRule("", deny, toNS(nsIs("y"))))),
			cnpOf("y-from-z", cnp.AdminTier, 1, subjectNS("y"), inRules(inRule("", accept, fromNS(nsIs("z")))), nil),
		}},
		{"both tiers and NetworkPolicies at once", []*networkingv1.NetworkPolicy{
			netpol("y", "c-from-x", podIs("c"), ingressOnly, ingressRules(rule(nil, peer(nil, labelsOf("ns", "x")))), nil)},
			[]*cnp.ClusterNetworkPolicy{
				cnpOf("guard", cnp.AdminTier, 1, subjectNS("y"), inRules(
					inRule("no-udp81", deny, fromNS(everything()), udpPort(81)),
					inRule("z-to-policy", pass, fromNS(nsIs("z")))), nil),
				cnpOf("base", cnp.BaselineTier, 1, subjectNS("y"), inRules(inRule("", deny, fromNS(nsIs("z")))), nil),
			}},
	}
}

// testClusterPolicyDrops checks that a drop by an Admin rule and one by a
// Baseline rule are sampled with a reason that names the policy and rule.
func testClusterPolicyDrops(t *testing.T, ctx context.Context, c *policyCluster) {
	c.createClusterPolicies(t, ctx, []*cnp.ClusterNetworkPolicy{
		cnpOf("guard", cnp.AdminTier, 10, subjectNS("x"), inRules(inRule("no-tcp81", deny, fromNS(nsIs("y")), tcpPort(81))), nil),
		cnpOf("floor", cnp.BaselineTier, 20, subjectNS("x"), inRules(inRule("", deny, fromNS(nsIs("z")))), nil),
	})
	c.waitMatrix(t, ctx, "with the policies")
	dst := c.pod("x", "a")
	for _, tc := range []struct {
		from   *policyPod
		port   uint16
		reason string
	}{
		{c.pod("y", "a"), 81, `denied by Admin ClusterNetworkPolicy guard (priority 10) ingress[0] "no-tcp81"`},
		{c.pod("z", "a"), 80, `denied by Baseline ClusterNetworkPolicy floor (priority 20) ingress[0]`},
	} {
		poll(t, ctx, func() error {
			c.probeOnce(ctx, probe{c.index(tc.from), c.index(dst), probePort{corev1.ProtocolTCP, tc.port}})
			st, err := policyStatus(ctx, dst.node)
			if err != nil {
				return err
			}
			for _, d := range st.Recent {
				if d.Pod == "x/a" && d.Src == tc.from.ip && d.Port == tc.port && strings.Contains(d.Reason, tc.reason) {
					return nil
				}
			}
			return fmt.Errorf("no sampled drop %s -> x/a port %d with reason %q on %s: %+v", tc.from, tc.port, tc.reason, dst.node.Name, st.Recent)
		})
	}
	c.deleteAllClusterPolicies(t, ctx)
	c.waitMatrix(t, ctx, "after deleting the policies")
}

// testClusterPolicyTiming changes ClusterNetworkPolicies in place and
// checks each change shows in the matrix within policyChangeLimit.
func testClusterPolicyTiming(t *testing.T, ctx context.Context, c *policyCluster) {
	c.createClusterPolicies(t, ctx, []*cnp.ClusterNetworkPolicy{
		cnpOf("flip", cnp.AdminTier, 10, subjectNS("z"), inRules(inRule("", deny, fromNS(nsIs("x")))), nil),
		cnpOf("other", cnp.AdminTier, 20, subjectNS("z"), inRules(inRule("", accept, fromNS(everything()))), nil),
	})
	c.waitMatrix(t, ctx, "z not from x")
	var times []time.Duration
	for range 2 {
		times = append(times, c.timeChange(t, ctx, "deny becomes pass", func() {
			c.updateClusterPolicy(t, ctx, "flip", func(p *cnp.ClusterNetworkPolicy) { p.Spec.Ingress[0].Action = pass })
		}))
		times = append(times, c.timeChange(t, ctx, "pass becomes deny", func() {
			c.updateClusterPolicy(t, ctx, "flip", func(p *cnp.ClusterNetworkPolicy) { p.Spec.Ingress[0].Action = deny })
		}))
		times = append(times, c.timeChange(t, ctx, "deny falls below the accept", func() {
			c.updateClusterPolicy(t, ctx, "flip", func(p *cnp.ClusterNetworkPolicy) { p.Spec.Priority = 30 })
		}))
		times = append(times, c.timeChange(t, ctx, "deny rises above the accept", func() {
			c.updateClusterPolicy(t, ctx, "flip", func(p *cnp.ClusterNetworkPolicy) { p.Spec.Priority = 10 })
		}))
	}
	c.deleteAllClusterPolicies(t, ctx)
	c.waitMatrix(t, ctx, "after deleting the policies")
	for _, d := range times {
		if d > policyChangeLimit {
			t.Errorf("a ClusterNetworkPolicy change took %v to show in the matrix, want at most %v (all: %v)", d, policyChangeLimit, times)
		}
	}
	t.Logf("ClusterNetworkPolicy changes took %v", times)
}

func (c *policyCluster) index(p *policyPod) int {
	for i, q := range c.pods {
		if q == p {
			return i
		}
	}
	panic("no pod " + p.String())
}

// Builders of ClusterNetworkPolicies.

func cnpOf(name string, tier cnp.Tier, prio int32, subject cnp.ClusterNetworkPolicySubject,
	in []cnp.ClusterNetworkPolicyIngressRule, out []cnp.ClusterNetworkPolicyEgressRule) *cnp.ClusterNetworkPolicy {
	return &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: cnp.ClusterNetworkPolicySpec{
		Tier: tier, Priority: prio, Subject: subject, Ingress: in, Egress: out}}
}

func nsIs(name string) *metav1.LabelSelector { return labelsOf("ns", name) }

func subjectNS(name string) cnp.ClusterNetworkPolicySubject {
	return cnp.ClusterNetworkPolicySubject{Namespaces: nsIs(name)}
}

func subjectPods(ns, pods *metav1.LabelSelector) cnp.ClusterNetworkPolicySubject {
	return cnp.ClusterNetworkPolicySubject{Pods: &cnp.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pods}}
}

func inRules(rs ...cnp.ClusterNetworkPolicyIngressRule) []cnp.ClusterNetworkPolicyIngressRule {
	return rs
}

func egRules(rs ...cnp.ClusterNetworkPolicyEgressRule) []cnp.ClusterNetworkPolicyEgressRule {
	return rs
}

func inRule(name string, a cnp.ClusterNetworkPolicyRuleAction, from cnp.ClusterNetworkPolicyIngressPeer, protos ...cnp.ClusterNetworkPolicyProtocol) cnp.ClusterNetworkPolicyIngressRule {
	return cnp.ClusterNetworkPolicyIngressRule{Name: name, Action: a, From: []cnp.ClusterNetworkPolicyIngressPeer{from}, Protocols: protos}
}

func egRule(name string, a cnp.ClusterNetworkPolicyRuleAction, to cnp.ClusterNetworkPolicyEgressPeer, protos ...cnp.ClusterNetworkPolicyProtocol) cnp.ClusterNetworkPolicyEgressRule {
	return cnp.ClusterNetworkPolicyEgressRule{Name: name, Action: a, To: []cnp.ClusterNetworkPolicyEgressPeer{to}, Protocols: protos}
}

func fromNS(s *metav1.LabelSelector) cnp.ClusterNetworkPolicyIngressPeer {
	return cnp.ClusterNetworkPolicyIngressPeer{Namespaces: s}
}

func fromPods(ns, pods *metav1.LabelSelector) cnp.ClusterNetworkPolicyIngressPeer {
	return cnp.ClusterNetworkPolicyIngressPeer{Pods: &cnp.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pods}}
}

func toNS(s *metav1.LabelSelector) cnp.ClusterNetworkPolicyEgressPeer {
	return cnp.ClusterNetworkPolicyEgressPeer{Namespaces: s}
}

func toNets(cidrs ...string) cnp.ClusterNetworkPolicyEgressPeer {
	var nets []cnp.CIDR
	for _, c := range cidrs {
		nets = append(nets, cnp.CIDR(c))
	}
	return cnp.ClusterNetworkPolicyEgressPeer{Networks: nets}
}

func tcpPort(n int32) cnp.ClusterNetworkPolicyProtocol {
	return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnp.Port{Number: n}}}
}

func tcpRange(from, to int32) cnp.ClusterNetworkPolicyProtocol {
	return cnp.ClusterNetworkPolicyProtocol{TCP: &cnp.ClusterNetworkPolicyProtocolTCP{
		DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: from, End: to}}}}
}

func udpPort(n int32) cnp.ClusterNetworkPolicyProtocol {
	return cnp.ClusterNetworkPolicyProtocol{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnp.Port{Number: n}}}
}

// udpAll is every UDP port (the CRD refuses a protocol without a port).
func udpAll() cnp.ClusterNetworkPolicyProtocol {
	return cnp.ClusterNetworkPolicyProtocol{UDP: &cnp.ClusterNetworkPolicyProtocolUDP{
		DestinationPort: &cnp.Port{Range: &cnp.PortRange{Start: 1, End: 65535}}}}
}

func namedPort(name string) cnp.ClusterNetworkPolicyProtocol {
	return cnp.ClusterNetworkPolicyProtocol{DestinationNamedPort: name}
}
