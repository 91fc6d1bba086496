package tests

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// policyChangeLimit is how soon a change in the API must show in the
// matrix.
const policyChangeLimit = 2 * time.Second

// testPolicyTiming measures how long policy and label changes take to show
// in the matrix, from the API write to the first probe round that sees
// the new answer in every cell the change touches.
func testPolicyTiming(t *testing.T, ctx context.Context, c *policyCluster) {
	var policyTimes, labelTimes []time.Duration
	onlyX := netpol("x", "a-from-x", podIs("a"), ingressOnly, ingressRules(rule(nil, peer(everything(), nil))), nil)
	for range 3 {
		policyTimes = append(policyTimes, c.timeChange(t, ctx, "create a policy", func() {
			c.createPolicies(t, ctx, []*networkingv1.NetworkPolicy{onlyX.DeepCopy()})
		}))
		policyTimes = append(policyTimes, c.timeChange(t, ctx, "delete a policy", func() {
			c.deleteAllPolicies(t, ctx)
		}))
	}

	// A policy updated in place: x/a from namespace x, then from y.
	c.createPolicies(t, ctx, []*networkingv1.NetworkPolicy{onlyX.DeepCopy()})
	c.waitMatrix(t, ctx, "x/a only from x")
	for _, ns := range []string{"y", "x"} {
		policyTimes = append(policyTimes, c.timeChange(t, ctx, "update a policy to allow namespace "+ns, func() {
			c.updatePolicy(t, ctx, "x", onlyX.Name, func(p *networkingv1.NetworkPolicy) {
				p.Spec.Ingress = ingressRules(rule(nil, peer(nil, labelsOf("ns", ns))))
			})
		}))
	}
	c.deleteAllPolicies(t, ctx)

	// Only backends (tier=backend, the b pods) reach x/a; y/b stops being
	// one and becomes one again.
	c.createPolicies(t, ctx, []*networkingv1.NetworkPolicy{
		netpol("x", "a-from-backends", podIs("a"), ingressOnly,
			ingressRules(rule(nil, peer(labelsOf("tier", "backend"), everything()))), nil)})
	c.waitMatrix(t, ctx, "x/a only from backends")
	yb := c.pod("y", "b")
	for range 3 {
		labelTimes = append(labelTimes, c.timeChange(t, ctx, "relabel y/b off the backends", func() {
			c.setPodLabels(t, ctx, yb, map[string]string{"pod": "b"})
		}))
		labelTimes = append(labelTimes, c.timeChange(t, ctx, "relabel y/b back", func() {
			c.setPodLabels(t, ctx, yb, map[string]string{"pod": "b", "tier": "backend"})
		}))
	}
	// The pod a policy selects: backends of x take ingress from x only,
	// and x/b stops being a backend and becomes one again.
	c.deleteAllPolicies(t, ctx)
	c.createPolicies(t, ctx, []*networkingv1.NetworkPolicy{
		netpol("x", "backends-from-x", *labelsOf("tier", "backend"), ingressOnly,
			ingressRules(rule(nil, peer(everything(), nil))), nil)})
	c.waitMatrix(t, ctx, "x's backends only from x")
	xb := c.pod("x", "b")
	labelTimes = append(labelTimes, c.timeChange(t, ctx, "relabel x/b off the backends", func() {
		c.setPodLabels(t, ctx, xb, map[string]string{"pod": "b"})
	}))
	labelTimes = append(labelTimes, c.timeChange(t, ctx, "relabel x/b back", func() {
		c.setPodLabels(t, ctx, xb, map[string]string{"pod": "b", "tier": "backend"})
	}))

	// A namespace's labels: only team blue (x and y) reaches z/c, then y
	// leaves the team and rejoins.
	c.deleteAllPolicies(t, ctx)
	c.createPolicies(t, ctx, []*networkingv1.NetworkPolicy{
		netpol("z", "c-from-blue", podIs("c"), ingressOnly,
			ingressRules(rule(nil, peer(nil, labelsOf("team", "blue")))), nil)})
	c.waitMatrix(t, ctx, "z/c only from team blue")
	labelTimes = append(labelTimes, c.timeChange(t, ctx, "namespace y leaves team blue", func() {
		c.setNamespaceLabels(t, ctx, "y", map[string]string{"ns": "y"})
	}))
	labelTimes = append(labelTimes, c.timeChange(t, ctx, "namespace y rejoins team blue", func() {
		c.setNamespaceLabels(t, ctx, "y", map[string]string{"ns": "y", "team": "blue"})
	}))
	c.deleteAllPolicies(t, ctx)
	c.waitMatrix(t, ctx, "after deleting the policies")

	for _, s := range []struct {
		what  string
		times []time.Duration
	}{{"policy changes", policyTimes}, {"label changes", labelTimes}} {
		slices.Sort(s.times)
		if len(s.times) == 0 {
			continue
		}
		p50, max := s.times[len(s.times)/2], s.times[len(s.times)-1]
		t.Logf("%s: %d samples, p50 %v, max %v (all %v)", s.what, len(s.times), p50.Round(time.Millisecond), max.Round(time.Millisecond), s.times)
		if max > policyChangeLimit {
			t.Errorf("%s took up to %v to show in the matrix, want at most %v", s.what, max, policyChangeLimit)
		}
	}
}

func everything() *metav1.LabelSelector { return &metav1.LabelSelector{} }

// timeChange runs write and returns how long the matrix took to show it:
// a round of probes of the cells the change touches starts every 50ms,
// and the answer is the start of the first round that saw the new matrix
// with every later round seeing it too. It fails the test when the change
// is not seen within policyWait, and checks the whole matrix afterwards.
func (c *policyCluster) timeChange(t *testing.T, ctx context.Context, what string, write func()) time.Duration {
	t.Helper()
	before := c.expected(t, ctx)
	start := time.Now()
	write()
	after := c.expected(t, ctx)
	var changed []probe
	for _, pr := range c.allProbes() {
		if before[pr] != after[pr] {
			changed = append(changed, pr)
		}
	}
	if len(changed) == 0 {
		t.Fatalf("%s: changes no cell of the matrix; the test is wrong", what)
	}
	type round struct {
		started time.Duration
		match   bool
	}
	results := make(chan round)
	inFlight := 0
	var rounds []round
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	launch := func() {
		inFlight++
		go func() {
			r := round{started: time.Since(start)}
			got := c.probeAll(ctx, changed, nil) // no retries: a lost probe only delays the answer
			r.match = c.differ(changed, after, got) == 0
			results <- r
		}()
	}
	byStart := func() { slices.SortFunc(rounds, func(a, b round) int { return int(a.started - b.started) }) }
	launch()
	deadline := time.After(policyWait)
	seen, expired := false, false
	for {
		select {
		case r := <-results:
			inFlight--
			rounds = append(rounds, r)
			seen = seen || r.match
		case <-tick.C:
			if !seen && !expired {
				launch()
			}
		case <-deadline:
			expired = true // launch no more; wait for the rounds in flight
		}
		if inFlight > 0 || !seen && !expired {
			continue
		}
		byStart()
		if expired || rounds[len(rounds)-1].match {
			break
		}
		// A round started after the first match did not match: a probe
		// lost on a busy machine, or the change flapped. Probe on until
		// the latest round matches again; the time counts from the first
		// round of the final run of matches.
		seen = false
		launch()
	}
	took := time.Duration(-1)
	for i := len(rounds) - 1; i >= 0 && rounds[i].match; i-- {
		took = rounds[i].started
	}
	if took < 0 {
		t.Errorf("%s: not in the matrix after %v", what, policyWait)
		took = policyWait
	}
	t.Logf("%s: %d cells changed, seen after %v (%d probe rounds)", what, len(changed), took.Round(time.Millisecond), len(rounds))
	c.waitMatrix(t, ctx, what)
	return took
}

// updatePolicy changes a NetworkPolicy in place.
func (c *policyCluster) updatePolicy(t *testing.T, ctx context.Context, ns, name string, change func(*networkingv1.NetworkPolicy)) {
	t.Helper()
	p, err := c.client.NetworkingV1().NetworkPolicies(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	change(p)
	if _, err := c.client.NetworkingV1().NetworkPolicies(ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update NetworkPolicy %s/%s: %v", ns, name, err)
	}
}

// setNamespaceLabels replaces a namespace's labels (the API adds its name
// label back).
func (c *policyCluster) setNamespaceLabels(t *testing.T, ctx context.Context, name string, labels map[string]string) {
	t.Helper()
	ns, err := c.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = maps.Clone(labels)
	if _, err := c.client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("relabel namespace %s: %v", name, err)
	}
}

// testPolicyLeftovers checks what "no rule left behind" means for weft:
// once every policy is gone, each node's policy chains, sets, maps and
// counters in the kernel are exactly as before the first policy (no
// per-pod drop chain or counter, no element in an allow set or drop map),
// and `weft status policy` lists no policy and no isolated pod.
func testPolicyLeftovers(t *testing.T, ctx context.Context, c *policyCluster, baseline map[string]string) {
	// The check sees rules when there are some.
	c.createPolicies(t, ctx, []*networkingv1.NetworkPolicy{
		netpol("x", "deny", metav1.LabelSelector{}, bothTypes, nil, nil),
		netpol("y", "deny", metav1.LabelSelector{}, bothTypes, nil, nil),
		netpol("z", "deny", metav1.LabelSelector{}, bothTypes, nil, nil),
	})
	poll(t, ctx, func() error {
		for _, n := range c.nodes {
			tab, err := policyTable(n)
			if err != nil {
				return err
			}
			if tab == baseline[n.Name] {
				return fmt.Errorf("%s has no rules for the policies yet:\n%s", n.Name, tab)
			}
			st, err := policyStatus(ctx, n)
			if err != nil {
				return err
			}
			if len(st.Policies) != 3 || len(st.Pods) != 3 {
				return fmt.Errorf("%s: status lists %d policies and %d pods, want 3 and 3", n.Name, len(st.Policies), len(st.Pods))
			}
		}
		return nil
	})
	c.deleteAllPolicies(t, ctx)
	c.waitMatrix(t, ctx, "after deleting every policy")
	for _, base := range baseline {
		if strings.Contains("\n"+base, "\nchain pol-drop-") || strings.Contains("\n"+base, "\nobject pol-") {
			t.Errorf("the baseline holds rules for pods although no policy existed:\n%s", base)
		}
	}
	poll(t, ctx, func() error {
		for _, n := range c.nodes {
			tab, err := policyTable(n)
			if err != nil {
				return err
			}
			if tab != baseline[n.Name] {
				return fmt.Errorf("%s's policy rules are not as before the first policy:\n%s\nwant:\n%s", n.Name, tab, baseline[n.Name])
			}
			st, err := policyStatus(ctx, n)
			if err != nil {
				return err
			}
			if !st.Enforcing || len(st.Policies) != 0 {
				return fmt.Errorf("%s: status %+v, want enforcing with no policies", n.Name, st)
			}
			for _, p := range st.Pods {
				if len(p.Ingress) > 0 || len(p.Egress) > 0 {
					return fmt.Errorf("%s: pod %s/%s still isolated by %v and %v", n.Name, p.Namespace, p.Name, p.Ingress, p.Egress)
				}
			}
		}
		return nil
	})
	for _, n := range c.nodes {
		t.Logf("%s's policy rules with no policy:\n%s", n.Name, baseline[n.Name])
	}
}
