package ring

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// benchRing is a ring of peers nodes over 10.32.0.0/12 after two donations
// per node, as a cluster that has been running a while looks.
func benchRing(b *testing.B, peers int) *Ring {
	b.Helper()
	var names []string
	for i := range peers {
		names = append(names, fmt.Sprintf("node-%04d.example.internal", i))
	}
	r, err := NewGenesis(netip.MustParsePrefix("10.32.0.0/12"), names)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for range 2 {
		for _, n := range names {
			spans := r.Spans(n)
			if len(spans) == 0 {
				continue
			}
			s := spans[len(spans)-1]
			if s.Len() < 4 {
				continue
			}
			half := Span{s.Start + s.Len()/2, s.End}
			if err := r.Transfer(n, names[rng.IntN(len(names))], half); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, n := range names {
		r.SetFree(n, rng.Uint64N(1000))
	}
	return r
}

// BenchmarkMerge: the cost of merging a peer's ring that differs by one
// donation, and the size of the encoded ring (what push/pull carries) and
// of a delta (what a broadcast carries). ns/op and allocs/op are one
// clone+decode+merge; the cost must grow linearly with the peers.
func BenchmarkMerge(b *testing.B) {
	for _, peers := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", peers), func(b *testing.B) {
			b.ReportAllocs()
			base := benchRing(b, peers)
			other := base.Clone()
			owner := base.Owners()[0]
			s := base.Spans(owner)[0]
			if err := other.Transfer(owner, base.Owners()[1], Span{s.Start, s.Start + 1}); err != nil {
				b.Fatal(err)
			}
			data := other.Encode(owner)
			delta := other.Delta([]Span{{s.Start, s.Start + 1}}, owner).Encode(owner)
			b.ResetTimer()
			for range b.N {
				r := base.Clone()
				o, _, err := Decode(data)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := r.Merge(o); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(data)), "ring-bytes")
			b.ReportMetric(float64(len(delta)), "delta-bytes")
			b.ReportMetric(float64(len(base.Entries())), "entries")
		})
	}
}

// BenchmarkRanges: every owner's CIDRs, what the daemon asks the ring for
// on every reconcile (its WireGuard AllowedIPs and routes). Linear in the
// entries: one pass, not one pass per owner.
func BenchmarkRanges(b *testing.B) {
	for _, peers := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", peers), func(b *testing.B) {
			r := benchRing(b, peers)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if got := len(r.CIDRsByOwner()); got != peers {
					b.Fatalf("%d owners, want %d", got, peers)
				}
			}
		})
	}
}
