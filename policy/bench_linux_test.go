package policy

import (
	"testing"

	"github.com/google/nftables"
)

// BenchmarkRender measures the rendering of the compiled rule set and the
// building of the whole nftables batch (without sending it).
func BenchmarkRender(b *testing.B) {
	rs := Compile(benchInput())
	cfg := Config{}.withDefaults()
	t := &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}
	elems := 0
	for b.Loop() {
		st := render(rs, cfg)
		c, err := nftables.New()
		if err != nil {
			b.Fatal(err)
		}
		if err := buildBatch(c, t, &kernelState{}, st); err != nil {
			b.Fatal(err)
		}
		elems = 0
		for _, s := range st.sets {
			elems += len(s.elems)
		}
	}
	b.ReportMetric(float64(elems), "elements")
}

// BenchmarkApply writes the big rule set into a throwaway namespace: the
// first load, a change (one policy fewer, alternating), an unchanged
// apply, and a Sync that reads the kernel back.
func BenchmarkApply(b *testing.B) {
	in := benchInput()
	rsA := Compile(in)
	in.Policies = in.Policies[1:]
	a := benchApply(b, rsA, Compile(in))
	b.Run("sync", func(b *testing.B) {
		for b.Loop() {
			if err := a.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	})
	if err := a.Remove(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkApplyTiers writes the big rule set with 100
// ClusterNetworkPolicies into a throwaway namespace: the first load, a
// change (one ClusterNetworkPolicy fewer, alternating) and an unchanged
// apply.
func BenchmarkApplyTiers(b *testing.B) {
	in := benchTiersInput()
	rsA := Compile(in)
	in.ClusterPolicies = in.ClusterPolicies[1:]
	a := benchApply(b, rsA, Compile(in))
	st := render(rsA, Config{}.withDefaults())
	elems := 0
	for _, s := range st.sets {
		elems += len(s.elems)
	}
	b.ReportMetric(float64(elems), "elements")
	if err := a.Remove(); err != nil {
		b.Fatal(err)
	}
}

// benchApply times the first load of rsA into a throwaway namespace, a
// change between rsA and rsB (alternating) and an unchanged apply, and
// returns the applier holding rsA.
func benchApply(b *testing.B, rsA, rsB RuleSet) *Applier {
	b.Run("initial", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			n := throwawayNetns(b)
			a := NewApplier(Config{NetNS: int(n.Fd())})
			b.StartTimer()
			if err := a.Apply(rsA); err != nil {
				b.Fatal(err)
			}
		}
	})
	n := throwawayNetns(b)
	a := NewApplier(Config{NetNS: int(n.Fd())})
	if err := a.Apply(rsA); err != nil {
		b.Fatal(err)
	}
	b.Run("change", func(b *testing.B) {
		i := 0
		for b.Loop() {
			rs := rsB
			if i%2 == 1 {
				rs = rsA
			}
			i++
			if err := a.Apply(rs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		for b.Loop() {
			if err := a.Apply(rsA); err != nil {
				b.Fatal(err)
			}
		}
	})
	return a
}
