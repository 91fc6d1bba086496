package ring

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// model is the slow, obviously right reference: one label per address.
type model []Label

func modelOf(r *Ring) model {
	m := make(model, r.size)
	for off := range m {
		m[off] = r.LabelAt(uint64(off))
	}
	return m
}

func (m model) merge(o model) {
	for i := range m {
		if m[i].Less(o[i]) {
			m[i] = o[i]
		}
	}
}

func (m model) transfer(self, to string, s Span) bool {
	for off := s.Start; off < s.End; off++ {
		if m[off].Owner != self {
			return false
		}
	}
	for off := s.Start; off < s.End; off++ {
		m[off] = Label{Version: m[off].Version + 1, Kind: KindOwned, Owner: to}
	}
	return true
}

func (m model) reclaim(claimant, dead string) {
	for off := range m {
		if m[off].Owner == dead {
			m[off] = Label{Version: m[off].Version + 1, Kind: KindClaim, Owner: claimant}
		}
	}
}

func (m model) equal(o model) bool {
	for i := range m {
		if m[i] != o[i] {
			return false
		}
	}
	return true
}

type simPeer struct {
	name string
	r    *Ring
	m    model
}

// randomRings runs a random history of transfers, reclaims and gossip among
// peers, checking every ring against the model after every step, and
// returns the rings seen along the way.
func randomRings(t *testing.T, rng *rand.Rand, steps int) ([]*simPeer, []*Ring) {
	t.Helper()
	names := []string{"a", "b", "c", "d", "e", "f"}
	g := mustGenesis(t, "10.0.0.0/24", names[:3]...)
	var peers []*simPeer
	for _, n := range names {
		p := &simPeer{name: n}
		if n <= "c" {
			p.r = g.Clone()
		} else {
			p.r, _ = NewEmpty(p24)
		}
		if p.r.Seeded() {
			p.m = modelOf(p.r)
		}
		peers = append(peers, p)
	}
	var seen []*Ring
	for step := 0; step < steps; step++ {
		p := peers[rng.IntN(len(peers))]
		switch op := rng.IntN(10); {
		case op < 3: // transfer part of one of p's spans
			spans := p.r.Spans(p.name)
			if len(spans) == 0 {
				continue
			}
			s := spans[rng.IntN(len(spans))]
			a := s.Start + rng.Uint64N(s.Len())
			b := a + 1 + rng.Uint64N(s.End-a)
			to := names[rng.IntN(len(names))]
			if to == p.name {
				continue
			}
			if err := p.r.Transfer(p.name, to, Span{a, b}); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if !p.m.transfer(p.name, to, Span{a, b}) {
				t.Fatalf("step %d: ring let %s transfer what the model says it does not own", step, p.name)
			}
		case op < 4: // reclaim another peer
			dead := names[rng.IntN(len(names))]
			if dead == p.name || !p.r.Seeded() {
				continue
			}
			if _, err := p.r.Reclaim(p.name, dead); err != nil {
				t.Fatal(err)
			}
			p.m.reclaim(p.name, dead)
		case op < 5: // free register
			p.r.SetFree(p.name, rng.Uint64N(256))
		case op < 7: // a delta of one random span reaches q
			q := peers[rng.IntN(len(peers))]
			a := rng.Uint64N(256)
			s := Span{a, a + 1 + rng.Uint64N(256-a)}
			d, _, err := Decode(p.r.Delta([]Span{s}, p.name).Encode(p.name))
			if err != nil {
				t.Fatalf("step %d: decode delta: %v", step, err)
			}
			if _, err := q.r.Merge(d); err != nil {
				t.Fatalf("step %d: merge delta: %v", step, err)
			}
			if p.m != nil && q.m != nil {
				for off := s.Start; off < s.End; off++ {
					if q.m[off].Less(p.m[off]) {
						q.m[off] = p.m[off]
					}
				}
			}
		default: // gossip: q learns p's ring, through the encoding
			q := peers[rng.IntN(len(peers))]
			o, origin, err := Decode(p.r.Encode(p.name))
			if err != nil || origin != p.name {
				t.Fatalf("step %d: decode: %v", step, err)
			}
			if _, err := q.r.Merge(o); err != nil {
				t.Fatalf("step %d: merge %s into %s: %v", step, p.name, q.name, err)
			}
			switch {
			case p.m == nil:
			case q.m == nil:
				q.m = append(model(nil), p.m...)
			default:
				q.m.merge(p.m)
			}
		}
		for _, p := range peers {
			if err := p.r.Validate(); err != nil {
				t.Fatalf("step %d: %s: %v", step, p.name, err)
			}
			if p.r.Seeded() && !modelOf(p.r).equal(p.m) {
				t.Fatalf("step %d: %s differs from the reference model", step, p.name)
			}
		}
		if rng.IntN(4) == 0 {
			seen = append(seen, p.r.Clone())
		}
	}
	return peers, seen
}

func TestRandomHistoriesMatchModel(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			peers, _ := randomRings(t, rng, 400)
			// Full gossip converges to one ring.
			for range 2 {
				for _, p := range peers {
					for _, q := range peers {
						mustMerge(t, q.r, p.r)
					}
				}
			}
			for _, p := range peers[1:] {
				if !p.r.Equal(peers[0].r) {
					t.Fatalf("%s and %s did not converge", p.name, peers[0].name)
				}
			}
		})
	}
}

func merged(t *testing.T, rs ...*Ring) *Ring {
	t.Helper()
	out := rs[0].Clone()
	for _, r := range rs[1:] {
		mustMerge(t, out, r)
	}
	return out
}

func TestMergeLaws(t *testing.T) {
	for seed := uint64(0); seed < 10; seed++ {
		rng := rand.New(rand.NewPCG(seed, 2))
		_, seen := randomRings(t, rng, 300)
		if len(seen) < 3 {
			continue
		}
		for range 50 {
			a, b, c := seen[rng.IntN(len(seen))], seen[rng.IntN(len(seen))], seen[rng.IntN(len(seen))]
			if !merged(t, a, b).Equal(merged(t, b, a)) {
				t.Fatal("merge is not commutative")
			}
			if !merged(t, merged(t, a, b), c).Equal(merged(t, a, merged(t, b, c))) {
				t.Fatal("merge is not associative")
			}
			if !merged(t, a, a).Equal(a) || !merged(t, a, b).Equal(merged(t, merged(t, a, b), b)) {
				t.Fatal("merge is not idempotent")
			}
		}
		// Every order of merging all of them gives the same ring.
		want := merged(t, seen...)
		for range 10 {
			perm := rng.Perm(len(seen))
			rs := make([]*Ring, len(seen))
			for i, j := range perm {
				rs[i] = seen[j]
			}
			if !merged(t, rs...).Equal(want) {
				t.Fatal("merge order changes the result")
			}
		}
	}
}

// TestByOwnerMatchesPerOwner: the one-pass SpansByOwner and CIDRsByOwner
// give what Spans and CIDRs give owner by owner, on random histories.
func TestByOwnerMatchesPerOwner(t *testing.T) {
	for seed := uint64(0); seed < 4; seed++ {
		rng := rand.New(rand.NewPCG(seed, 3))
		_, seen := randomRings(t, rng, 100)
		for _, r := range seen {
			spans, cidrs := r.SpansByOwner(), r.CIDRsByOwner()
			owners := r.Owners()
			if len(spans) != len(owners) || len(cidrs) != len(owners) {
				t.Fatalf("seed %d: %d owners, SpansByOwner has %d, CIDRsByOwner %d", seed, len(owners), len(spans), len(cidrs))
			}
			for _, o := range owners {
				if !slices.Equal(spans[o], r.Spans(o)) {
					t.Fatalf("seed %d: spans of %s: got %v, want %v", seed, o, spans[o], r.Spans(o))
				}
				if !slices.Equal(cidrs[o], r.CIDRs(o)) {
					t.Fatalf("seed %d: CIDRs of %s: got %v, want %v", seed, o, cidrs[o], r.CIDRs(o))
				}
			}
		}
	}
}
