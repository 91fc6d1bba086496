package policy

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	networkingv1 "k8s.io/api/networking/v1"
)

// throwawayNetns gives a test a new network namespace, removed at the end.
func throwawayNetns(t testing.TB) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and nftables rules")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

// addForeignChain stands in for the daemon's masquerade chain, which the
// applier must never touch.
func addForeignChain(t *testing.T, n ns.NetNS) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Name: "weft", Family: nftables.TableFamilyINet})
	ch := c.AddChain(&nftables.Chain{Name: "masquerade", Table: tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}})
	if err := c.Flush(); err != nil {
		t.Fatalf("add foreign chain: %v", err)
	}
}

func foreignChainRules(t *testing.T, n ns.NetNS) int {
	t.Helper()
	c, _ := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	rules, err := c.GetRules(&nftables.Table{Name: "weft", Family: nftables.TableFamilyINet}, &nftables.Chain{Name: "masquerade"})
	if err != nil {
		t.Fatalf("read foreign chain: %v", err)
	}
	return len(rules)
}

// checkInKernel reads the kernel back and compares it with the render of rs.
func checkInKernel(t *testing.T, a *Applier, rs RuleSet) {
	t.Helper()
	c, err := a.conn()
	if err != nil {
		t.Fatal(err)
	}
	have, err := a.read(c)
	if err != nil {
		t.Fatal(err)
	}
	if d := have.diff(render(rs, a.cfg)); d != "" {
		t.Fatalf("kernel differs from the rule set: %s", d)
	}
}

func TestApplierInNetns(t *testing.T) {
	n := throwawayNetns(t)
	addForeignChain(t, n)
	a := NewApplier(Config{NetNS: int(n.Fd())})

	in := goldenInput()
	rs := Compile(in)
	if err := a.Apply(rs); err != nil {
		t.Fatalf("apply: %v", err)
	}
	checkInKernel(t, a, rs)
	if got := a.Writes(); got != 1 {
		t.Fatalf("writes after the first apply = %d, want 1", got)
	}

	// Applying the same rule set again writes nothing.
	if err := a.Apply(Compile(goldenInput())); err != nil {
		t.Fatalf("re-apply: %v", err)
	}
	if got := a.Writes(); got != 1 {
		t.Fatalf("writes after an unchanged apply = %d, want 1", got)
	}

	// Drift: someone flushes a set and deletes a drop chain's rules; Sync
	// repairs it.
	c, _ := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	tbl := &nftables.Table{Name: "weft", Family: nftables.TableFamilyINet}
	c.FlushSet(&nftables.Set{Name: "pol-ingress-allow4", Table: tbl})
	c.FlushChain(&nftables.Chain{Name: "pol-drop-in-10-32-0-5", Table: tbl})
	if err := c.Flush(); err != nil {
		t.Fatalf("make drift: %v", err)
	}
	if err := a.Sync(); err != nil {
		t.Fatalf("sync: %v", err)
	}
	checkInKernel(t, a, rs)
	if got := a.Writes(); got != 2 {
		t.Fatalf("writes after repairing drift = %d, want 2", got)
	}

	// A changed rule set: x/b is no longer isolated, so its drop chains and
	// counters go.
	in.Policies = slices.DeleteFunc(in.Policies, func(p *networkingv1.NetworkPolicy) bool { return p.Name != "web" })
	rs2 := Compile(in)
	if err := a.Apply(rs2); err != nil {
		t.Fatalf("apply changed: %v", err)
	}
	checkInKernel(t, a, rs2)
	c2, _ := a.conn()
	have, _ := a.read(c2)
	for name := range have.chains {
		if strings.Contains(name, "10-32-0-6") {
			t.Errorf("stale chain %s left behind", name)
		}
	}
	if len(have.counters) != 2 {
		t.Errorf("counters = %v, want the two of x/a", have.counters)
	}
	drops, err := a.Drops()
	if err != nil || len(drops) != 2 || drops[0].Name != "a" {
		t.Errorf("drops = %+v, %v; want the counters of x/a", drops, err)
	}

	// Someone deletes the whole table; the next Apply with a change finds
	// its diff does not fit the kernel, reads it and rewrites everything.
	c.DelTable(tbl)
	if err := c.Flush(); err != nil {
		t.Fatalf("delete table: %v", err)
	}
	if err := a.Apply(rs); err != nil {
		t.Fatalf("apply after the table was deleted: %v", err)
	}
	checkInKernel(t, a, rs)
	addForeignChain(t, n)

	if err := a.Remove(); err != nil {
		t.Fatalf("remove: %v", err)
	}
	have, err = a.read(c2)
	if err != nil {
		t.Fatal(err)
	}
	if len(have.chains)+len(have.sets)+len(have.counters) != 0 {
		t.Errorf("after Remove: chains %d, sets %d, counters %d left", len(have.chains), len(have.sets), len(have.counters))
	}
	if foreignChainRules(t, n) != 1 {
		t.Error("the masquerade chain was touched")
	}
	if err := a.Remove(); err != nil {
		t.Fatalf("second remove: %v", err)
	}
}

// TestApplierTiersInNetns applies the ClusterNetworkPolicy tier maps (with
// return and jump verdicts) and checks that an unchanged rule set writes
// nothing, so the verdicts read back from the kernel compare equal.
func TestApplierTiersInNetns(t *testing.T) {
	n := throwawayNetns(t)
	a := NewApplier(Config{NetNS: int(n.Fd())})
	rs := Compile(tiersInput())
	if err := a.Apply(rs); err != nil {
		t.Fatalf("apply: %v", err)
	}
	checkInKernel(t, a, rs)
	if err := a.Apply(Compile(tiersInput())); err != nil {
		t.Fatalf("re-apply: %v", err)
	}
	if got := a.Writes(); got != 1 {
		t.Fatalf("writes after an unchanged apply = %d, want 1", got)
	}
	// Changes past flushAbove replace whole sets in the same batch.
	defer func(v int) { flushAbove = v }(flushAbove)
	flushAbove = 0
	in := tiersInput()
	in.ClusterPolicies = in.ClusterPolicies[1:]
	for _, rs := range []RuleSet{Compile(in), rs} {
		if err := a.Apply(rs); err != nil {
			t.Fatalf("apply a changed rule set by replacing sets: %v", err)
		}
		checkInKernel(t, a, rs)
	}
	if err := a.Remove(); err != nil {
		t.Fatalf("remove: %v", err)
	}
}
