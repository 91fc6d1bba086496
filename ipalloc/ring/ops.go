package ring

import (
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Merge folds o into r: every address takes the greater of its two labels,
// every free register the greater of its two values. An unseeded r adopts
// o's genesis. It reports whether the ownership of any address changed
// (free registers excepted). On error r is unchanged.
func (r *Ring) Merge(o *Ring) (changed bool, err error) {
	if r.partial {
		return false, errors.New("cannot merge into a delta")
	}
	if o.prefix != r.prefix {
		return false, fmt.Errorf("%w: other ring covers %v, this one %v", ErrDifferentGenesis, o.prefix, r.prefix)
	}
	if err := o.Validate(); err != nil {
		return false, fmt.Errorf("refuse ring: %w", err)
	}
	learn := o.Seeded()
	switch {
	case !o.Seeded():
		// Nothing to learn about ownership; free registers still merge.
	case !r.Seeded() && o.partial:
		// A delta cannot seed a ring: wait for a whole one.
		learn = false
	case !r.Seeded():
		// adopt below
	case o.genesis != r.genesis:
		return false, fmt.Errorf("%w: this ring is %s, the other %s", ErrDifferentGenesis, r.genesis, o.genesis)
	}
	merged := r.entries
	genesis := r.genesis
	if learn {
		merged = mergeEntries(r.entries, o.entries)
		genesis = o.genesis
		changed = !slices.Equal(merged, r.entries)
	}
	free := maps.Clone(r.free)
	for k, v := range o.free {
		if w, ok := free[k]; !ok || v.Version > w.Version || (v.Version == w.Version && v.Count > w.Count) {
			free[k] = v
		}
	}
	next := &Ring{prefix: r.prefix, base: r.base, size: r.size, genesis: genesis, entries: merged, free: free}
	if err := next.Validate(); err != nil {
		return false, fmt.Errorf("refuse merge: %w", err)
	}
	r.genesis, r.entries, r.free = genesis, merged, free
	return changed, nil
}

// mergeEntries is the pointwise maximum of two canonical entry lists that
// both cover [0, size), in canonical form.
func mergeEntries(a, b []Entry) []Entry {
	out := make([]Entry, 0, max(len(a), len(b)))
	i, j := 0, 0
	var la, lb Label
	for i < len(a) || j < len(b) {
		var pos uint32
		switch {
		case j >= len(b) || (i < len(a) && a[i].Start < b[j].Start):
			pos = a[i].Start
		default:
			pos = b[j].Start
		}
		if i < len(a) && a[i].Start == pos {
			la = a[i].Label
			i++
		}
		if j < len(b) && b[j].Start == pos {
			lb = b[j].Label
			j++
		}
		l := maxLabel(la, lb)
		if n := len(out); n > 0 && out[n-1].Label == l {
			continue
		}
		out = append(out, Entry{Start: pos, Label: l})
	}
	return out
}

// set relabels [s.Start, s.End) with l, keeping the list canonical.
func (r *Ring) set(s Span, l Label) {
	if s.Start >= s.End {
		return
	}
	out := make([]Entry, 0, len(r.entries)+2)
	for _, e := range r.entries {
		if uint64(e.Start) < s.Start {
			out = append(out, e)
		}
	}
	out = append(out, Entry{Start: uint32(s.Start), Label: l})
	if s.End < r.size {
		out = append(out, Entry{Start: uint32(s.End), Label: r.LabelAt(s.End)})
		for _, e := range r.entries {
			if uint64(e.Start) > s.End {
				out = append(out, e)
			}
		}
	}
	r.entries = canonical(out)
}

// canonical drops every entry whose label repeats the one before it.
func canonical(es []Entry) []Entry {
	out := es[:0]
	for _, e := range es {
		if n := len(out); n > 0 && out[n-1].Label == e.Label {
			continue
		}
		out = append(out, e)
	}
	return out
}

// Transfer gives the span s, which self must own entirely, to the node to;
// every entry in it takes one version above its own (so it beats what
// others knew of it) with KindOwned.
func (r *Ring) Transfer(self, to string, s Span) error {
	if err := checkName(to); err != nil {
		return fmt.Errorf("transfer to %q: %w", to, err)
	}
	if s.Start >= s.End || s.End > r.size {
		return fmt.Errorf("transfer [%d,%d): outside the range of %d addresses", s.Start, s.End, r.size)
	}
	parts, err := r.pieces(s)
	if err != nil {
		return err
	}
	for _, p := range parts {
		if p.label.Owner != self {
			return fmt.Errorf("transfer %s-%s to %s: %w (%s owns %s)", r.Addr(s.Start), r.Addr(s.End-1), to, ErrNotOwner, p.label.Owner, r.Addr(p.span.Start))
		}
	}
	for _, p := range parts {
		r.set(p.span, Label{Version: p.label.Version + 1, Kind: KindOwned, Owner: to})
	}
	return nil
}

type piece struct {
	span  Span
	label Label
}

// pieces cuts s at entry boundaries.
func (r *Ring) pieces(s Span) ([]piece, error) {
	if !r.Seeded() {
		return nil, fmt.Errorf("the ring is not seeded yet: %w", ErrNotOwner)
	}
	var out []piece
	for i, e := range r.entries {
		start, end := max(uint64(e.Start), s.Start), min(r.end(i), s.End)
		if start < end {
			out = append(out, piece{Span{start, end}, e.Label})
		}
	}
	return out, nil
}

// Claim is one span taken from a dead node by Reclaim, with the label the
// claimant gave it.
type Claim struct {
	Span  Span
	Label Label
}

// Reclaim gives every span of dead to claimant as a claim (KindClaim, one
// version above each entry's). It returns the claims made, none when dead
// owns nothing (a second reclaim is a no-op).
func (r *Ring) Reclaim(claimant, dead string) ([]Claim, error) {
	if err := checkName(claimant); err != nil {
		return nil, fmt.Errorf("reclaim by %q: %w", claimant, err)
	}
	if claimant == dead {
		return nil, fmt.Errorf("reclaim: %s cannot reclaim its own ranges", dead)
	}
	var claims []Claim
	for i, e := range r.entries {
		if e.Owner == dead {
			claims = append(claims, Claim{Span{uint64(e.Start), r.end(i)}, Label{Version: e.Version + 1, Kind: KindClaim, Owner: claimant}})
		}
	}
	for _, c := range claims {
		r.set(c.Span, c.Label)
	}
	return claims, nil
}

// Holds reports whether every address of s carries label l, and whether any does.
func (r *Ring) Holds(s Span, l Label) (all, some bool) {
	all = true
	for i, e := range r.entries {
		if uint64(e.Start) >= s.End || r.end(i) <= s.Start {
			continue
		}
		if e.Label == l {
			some = true
		} else {
			all = false
		}
	}
	return all && r.Seeded(), some
}

// SetFree publishes owner's free count with a version above any seen.
func (r *Ring) SetFree(owner string, count uint64) {
	f := r.free[owner]
	if f.Count == count && f.Version > 0 {
		return
	}
	r.free[owner] = Free{Version: f.Version + 1, Count: min(count, r.size)}
}

// Validate checks the invariants: a seeded ring's entries start at 0, are
// strictly increasing, inside the range, canonical and all owned; an
// unseeded ring has no entries; names are well formed.
func (r *Ring) Validate() error {
	if !r.Seeded() {
		if len(r.entries) != 0 || r.partial {
			return fmt.Errorf("%w: unseeded ring has %d entries", ErrInvariant, len(r.entries))
		}
	} else {
		if len(r.entries) == 0 || r.entries[0].Start != 0 {
			return fmt.Errorf("%w: seeded ring does not start at the first address", ErrInvariant)
		}
		for i, e := range r.entries {
			if uint64(e.Start) >= r.size {
				return fmt.Errorf("%w: entry %d starts outside the range", ErrInvariant, i)
			}
			if i > 0 && e.Start <= r.entries[i-1].Start {
				return fmt.Errorf("%w: entries %d and %d overlap", ErrInvariant, i-1, i)
			}
			if i > 0 && e.Label == r.entries[i-1].Label {
				return fmt.Errorf("%w: entries %d and %d are not joined", ErrInvariant, i-1, i)
			}
			if r.partial && e.Label == (Label{}) {
				continue // unknown in a delta
			}
			if err := checkName(e.Owner); err != nil {
				return fmt.Errorf("%w: entry %d: address %s has no valid owner: %v", ErrInvariant, i, r.Addr(uint64(e.Start)), err)
			}
			if e.Version == 0 || e.Kind > KindClaim {
				return fmt.Errorf("%w: entry %d: bad version or kind", ErrInvariant, i)
			}
		}
	}
	for k, v := range r.free {
		if err := checkName(k); err != nil {
			return fmt.Errorf("%w: free register: %v", ErrInvariant, err)
		}
		if v.Count > r.size {
			return fmt.Errorf("%w: %s claims %d free addresses in a range of %d", ErrInvariant, k, v.Count, r.size)
		}
	}
	return nil
}
