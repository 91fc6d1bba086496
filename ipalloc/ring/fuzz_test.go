package ring

import (
	"math/rand/v2"
	"testing"
)

func seedCorpus(f *testing.F) {
	g, _ := NewGenesis(p24, []string{"a", "b", "c"})
	f.Add(g.Encode("a"))
	g.Transfer("a", "d", Span{10, 20})
	g.Reclaim("d", "b")
	g.SetFree("a", 3)
	f.Add(g.Encode("d"))
	f.Add(g.Delta([]Span{{5, 30}}, "a").Encode("a"))
	e, _ := NewEmpty(p24)
	f.Add(e.Encode(""))
	f.Add([]byte("WR\x01\x01"))
}

// FuzzDecode: any input decodes to a valid ring that re-encodes to the same
// bytes, or to an error; never a panic.
func FuzzDecode(f *testing.F) {
	seedCorpus(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, origin, err := Decode(data)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("decoded an invalid ring: %v", err)
		}
		again, origin2, err := Decode(r.Encode(origin))
		if err != nil || origin2 != origin || !again.Equal(r) {
			t.Fatalf("re-encoding does not round-trip: %v", err)
		}
	})
}

// FuzzMerge merges a decoded ring into rings of a known history: the merge
// either fails leaving the ring unchanged, or succeeds with every invariant
// held and the merge laws intact.
func FuzzMerge(f *testing.F) {
	seedCorpus(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		o, _, err := Decode(data)
		if err != nil {
			return
		}
		base, _ := NewGenesis(o.prefix, []string{"a", "b", "c"})
		if base == nil {
			return
		}
		rng := rand.New(rand.NewPCG(uint64(len(data)), 7))
		for range 5 {
			spans := base.Spans("a")
			if len(spans) == 0 {
				break
			}
			s := spans[0]
			a := s.Start + rng.Uint64N(s.Len())
			base.Transfer("a", "b", Span{a, a + 1})
		}
		if o.Partial() {
			// A delta merges into whole rings only.
			if _, err := o.Clone().Merge(base); err == nil {
				t.Fatal("merged into a delta")
			}
		}
		for _, r := range []*Ring{base, mustEmpty(o)} {
			before := r.Clone()
			if _, err := r.Merge(o); err != nil {
				if !r.Equal(before) {
					t.Fatal("failed merge changed the ring")
				}
				continue
			}
			if err := r.Validate(); err != nil {
				t.Fatalf("merge broke an invariant: %v", err)
			}
			again := r.Clone()
			if _, err := again.Merge(o); err != nil || !again.Equal(r) {
				t.Fatal("merge is not idempotent")
			}
			if o.Partial() {
				continue
			}
			other := o.Clone()
			if _, err := other.Merge(before); err != nil {
				t.Fatalf("merge is not symmetric in what it accepts: %v", err)
			}
			if !other.Equal(r) {
				t.Fatal("merge is not commutative")
			}
		}
	})
}

func mustEmpty(o *Ring) *Ring {
	e, _ := NewEmpty(o.prefix)
	return e
}
