package ring

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var p24 = netip.MustParsePrefix("10.0.0.0/24")

func mustGenesis(t testing.TB, cidr string, seed ...string) *Ring {
	t.Helper()
	r, err := NewGenesis(netip.MustParsePrefix(cidr), seed)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func cidrs(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, " ")
}

func TestGenesis(t *testing.T) {
	tests := []struct {
		cidr string
		seed []string
		want map[string]string
	}{
		{"10.32.0.0/12", []string{"a"}, map[string]string{"a": "10.32.0.0/12"}},
		{"10.32.0.0/12", []string{"b", "a", "a", " "}, map[string]string{"a": "10.32.0.0/13", "b": "10.40.0.0/13"}},
		{"10.32.0.0/12", []string{"c", "b", "a"}, map[string]string{"a": "10.32.0.0/13", "b": "10.40.0.0/14", "c": "10.44.0.0/14"}},
		{"10.0.0.0/24", []string{"n1", "n2", "n3", "n4", "n5"}, map[string]string{
			"n1": "10.0.0.0/26", "n2": "10.0.0.64/26", "n3": "10.0.0.128/26", "n4": "10.0.0.192/27", "n5": "10.0.0.224/27"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.cidr, tt.seed), func(t *testing.T) {
			r := mustGenesis(t, tt.cidr, tt.seed...)
			got := map[string]string{}
			for _, o := range r.Owners() {
				got[o] = cidrs(r.CIDRs(o))
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			// Same list in another order: same genesis.
			rev := slices.Clone(tt.seed)
			slices.Reverse(rev)
			if g := mustGenesis(t, tt.cidr, rev...); !g.Equal(r) {
				t.Errorf("genesis depends on the order of the seed list")
			}
		})
	}
}

func TestGenesisErrors(t *testing.T) {
	for _, tt := range []struct {
		cidr string
		seed []string
	}{
		{"10.0.0.0/24", nil},
		{"10.0.0.0/31", []string{"a"}},
		{"fd00::/64", []string{"a"}},
		{"10.0.0.0/30", []string{"a", "b", "c", "d", "e"}},
		{"10.0.0.0/24", []string{strings.Repeat("x", 300)}},
	} {
		if _, err := NewGenesis(netip.MustParsePrefix(tt.cidr), tt.seed); err == nil {
			t.Errorf("NewGenesis(%s, %v): no error", tt.cidr, tt.seed)
		}
	}
}

func TestSpanCIDRs(t *testing.T) {
	r, _ := NewEmpty(p24)
	for _, tt := range []struct {
		s    Span
		want string
	}{
		{Span{0, 256}, "10.0.0.0/24"},
		{Span{1, 5}, "10.0.0.1/32 10.0.0.2/31 10.0.0.4/32"},
		{Span{64, 192}, "10.0.0.64/26 10.0.0.128/26"},
		{Span{255, 256}, "10.0.0.255/32"},
	} {
		if got := cidrs(r.SpanCIDRs(tt.s)); got != tt.want {
			t.Errorf("SpanCIDRs(%v) = %s, want %s", tt.s, got, tt.want)
		}
	}
}

func TestTransfer(t *testing.T) {
	r := mustGenesis(t, "10.0.0.0/24", "a", "b")
	if err := r.Transfer("a", "c", Span{64, 128}); err != nil {
		t.Fatal(err)
	}
	if got := cidrs(r.CIDRs("a")); got != "10.0.0.0/26" {
		t.Errorf("a owns %s", got)
	}
	if got := cidrs(r.CIDRs("c")); got != "10.0.0.64/26" {
		t.Errorf("c owns %s", got)
	}
	if l := r.LabelAt(70); l != (Label{Version: 2, Owner: "c"}) {
		t.Errorf("label %+v", l)
	}
	// Not the owner: refused, ring unchanged.
	before := r.Clone()
	if err := r.Transfer("a", "c", Span{100, 140}); !errors.Is(err, ErrNotOwner) {
		t.Errorf("transfer of another's span: %v", err)
	}
	if !r.Equal(before) {
		t.Error("failed transfer changed the ring")
	}
	// Give back: joins again into one prefix (two entries, one span).
	if err := r.Transfer("c", "a", Span{64, 128}); err != nil {
		t.Fatal(err)
	}
	if got := cidrs(r.CIDRs("a")); got != "10.0.0.0/25" || len(r.Entries()) != 3 {
		t.Errorf("a owns %s", got)
	}
}

func TestLabelOrder(t *testing.T) {
	for _, tt := range []struct{ lo, hi Label }{
		{Label{1, KindOwned, "a"}, Label{2, KindOwned, "a"}},
		{Label{2, KindClaim, "a"}, Label{2, KindOwned, "z"}},
		{Label{2, KindClaim, "b"}, Label{2, KindClaim, "a"}},
		{Label{}, Label{1, KindClaim, "z"}},
	} {
		if !tt.lo.Less(tt.hi) || tt.hi.Less(tt.lo) {
			t.Errorf("want %+v < %+v", tt.lo, tt.hi)
		}
	}
}

func TestReclaimTwiceConcurrently(t *testing.T) {
	g := mustGenesis(t, "10.0.0.0/24", "a", "b", "c", "dead")
	b, c := g.Clone(), g.Clone()
	if cl, _ := b.Reclaim("b", "dead"); len(cl) != 1 {
		t.Fatalf("b claims %v", cl)
	}
	if cl, _ := c.Reclaim("c", "dead"); len(cl) != 1 {
		t.Fatalf("c claims %v", cl)
	}
	bc, cb := b.Clone(), c.Clone()
	mustMerge(t, bc, c)
	mustMerge(t, cb, b)
	if !bc.Equal(cb) {
		t.Fatal("concurrent claims do not converge")
	}
	if got := cidrs(bc.CIDRs("b")); got != "10.0.0.64/26 10.0.0.192/26" {
		t.Errorf("b owns %s; the smaller claimant should win", got)
	}
	if len(bc.Spans("dead")) != 0 || len(bc.Spans("c")) != 1 {
		t.Errorf("owners after reclaim: %v", bc.Owners())
	}
	// A second reclaim is a no-op.
	if cl, _ := bc.Reclaim("c", "dead"); len(cl) != 0 {
		t.Errorf("second reclaim made claims %v", cl)
	}
}

func TestTransferBeatsStaleClaim(t *testing.T) {
	g := mustGenesis(t, "10.0.0.0/24", "a", "b", "c", "dead")
	stale := g.Clone()
	// dead gave half its span to a just before dying; b never heard.
	if err := g.Transfer("dead", "a", Span{192, 224}); err != nil {
		t.Fatal(err)
	}
	if _, err := stale.Reclaim("b", "dead"); err != nil {
		t.Fatal(err)
	}
	mustMerge(t, stale, g)
	if got := cidrs(stale.CIDRs("a")); got != "10.0.0.0/26 10.0.0.192/27" {
		t.Errorf("a owns %s: its transfer must beat the stale claim", got)
	}
	if got := cidrs(stale.CIDRs("b")); got != "10.0.0.64/26 10.0.0.224/27" {
		t.Errorf("b owns %s", got)
	}
}

func TestMergeGenesis(t *testing.T) {
	a := mustGenesis(t, "10.0.0.0/24", "a", "b")
	b := mustGenesis(t, "10.0.0.0/24", "a", "c")
	before := a.Clone()
	if _, err := a.Merge(b); !errors.Is(err, ErrDifferentGenesis) {
		t.Errorf("merge of another genesis: %v", err)
	}
	if !a.Equal(before) {
		t.Error("refused merge changed the ring")
	}
	other := mustGenesis(t, "10.1.0.0/24", "a", "b")
	if _, err := a.Merge(other); !errors.Is(err, ErrDifferentGenesis) {
		t.Errorf("merge of another range: %v", err)
	}
	e, _ := NewEmpty(p24)
	if changed, err := e.Merge(a); err != nil || !changed || !e.Equal(a) {
		t.Errorf("empty ring did not adopt: changed=%v err=%v", changed, err)
	}
	e2, _ := NewEmpty(p24)
	if changed, err := a.Merge(e2); err != nil || changed {
		t.Errorf("merge of an empty ring: changed=%v err=%v", changed, err)
	}
}

func TestMergeRefusesInvalid(t *testing.T) {
	a := mustGenesis(t, "10.0.0.0/24", "a", "b")
	bad := a.Clone()
	bad.entries = append(bad.entries, Entry{Start: 10, Label: Label{Version: 3, Owner: "x"}}) // out of order
	before := a.Clone()
	if _, err := a.Merge(bad); !errors.Is(err, ErrInvariant) {
		t.Errorf("merge of an invalid ring: %v", err)
	}
	if !a.Equal(before) {
		t.Error("refused merge changed the ring")
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	r := mustGenesis(t, "10.32.0.0/12", "a", "b", "c")
	if err := r.Transfer("a", "d", Span{1000, 5000}); err != nil {
		t.Fatal(err)
	}
	r.Reclaim("d", "c")
	r.SetFree("a", 12345)
	r.SetFree("d", 7)
	got, origin, err := Decode(r.Encode("node-a"))
	if err != nil {
		t.Fatal(err)
	}
	if origin != "node-a" || !got.Equal(r) {
		t.Errorf("round trip: origin %q, equal %v", origin, got.Equal(r))
	}
	e, _ := NewEmpty(p24)
	if got, _, err := Decode(e.Encode("")); err != nil || !got.Equal(e) {
		t.Errorf("empty round trip: %v", err)
	}
	newer := r.Encode("x")
	newer[2] = 9
	if _, _, err := Decode(newer); !errors.Is(err, ErrNewerFormat) {
		t.Errorf("newer format: %v", err)
	}
	enc := r.Encode("x")
	for i := range enc {
		if _, _, err := Decode(enc[:i]); err == nil {
			t.Errorf("truncated to %d bytes: no error", i)
		}
	}
}

func mustMerge(t testing.TB, r, o *Ring) bool {
	t.Helper()
	changed, err := r.Merge(o)
	if err != nil {
		t.Fatal(err)
	}
	return changed
}

func TestDelta(t *testing.T) {
	g := mustGenesis(t, "10.0.0.0/24", "a", "b")
	full := g.Clone()
	if err := full.Transfer("a", "c", Span{16, 32}); err != nil {
		t.Fatal(err)
	}
	full.SetFree("a", 100)
	d := full.Delta([]Span{{16, 32}}, "a")
	got, _, err := Decode(d.Encode("a"))
	if err != nil || !got.Partial() || len(got.Entries()) != 3 {
		t.Fatalf("delta: %v, %+v", err, got)
	}
	if n := len(d.Encode("a")); n > 80 {
		t.Errorf("delta of one span is %d bytes", n)
	}
	mine := g.Clone()
	if changed := mustMerge(t, mine, got); !changed {
		t.Error("delta changed nothing")
	}
	if !mine.Equal(full) {
		t.Error("merging the delta differs from merging the whole ring")
	}
	// A delta cannot seed an empty ring, nor be merged into.
	e, _ := NewEmpty(p24)
	if changed, err := e.Merge(got); err != nil || changed || e.Seeded() {
		t.Errorf("empty ring took a delta: %v %v", changed, err)
	}
	if _, err := got.Merge(full); err == nil {
		t.Error("merged into a delta")
	}
}
