// Package ring is the pure CRDT at the heart of weft's address allocator: the
// pod range as a ring of address spans, each with one owner.
//
// The ring is a function from every address of the range to a label
// (version, kind, owner), stored as a sorted list of entries, each labelling
// the addresses from its start up to the next entry's start. Labels are
// totally ordered:
//
//	higher version wins;
//	same version: a transfer made by the owner (KindOwned) beats a reclaim claim (KindClaim);
//	same version and kind: the lexicographically smaller owner wins.
//
// Merge takes the greater label of every address, so it is commutative,
// associative and idempotent by construction; the result is kept canonical
// (adjacent entries always differ), so two rings that hold the same
// knowledge compare equal entry by entry. Invariants (entries sorted, inside
// the range, no address unowned once seeded) are checked after every merge
// and a merge that would break one is refused, leaving the ring unchanged.
//
// Only an owner changes its own spans (Transfer bumps the version of what it
// gives away); the one exception is Claim, the reclaim of a dead node's spans
// (weft rmpeer), which labels them KindClaim at one version above. Two
// concurrent claims of the same span resolve to the same winner everywhere
// (the smaller claimant), and a transfer the dead node made that a claimant
// had not heard of beats the claim. A claimant must not allocate from a
// claimed span until every live peer has echoed it back (see package
// ipalloc): that is what keeps two nodes from ever serving the same address.
//
// Each owner also publishes its free address count as a last-writer-wins
// register that only it writes, used to choose whom to ask for space.
//
// The ring has no locks, no I/O and no clock; callers serialise access.
package ring

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
)

// Errors callers branch on.
var (
	// ErrDifferentGenesis: the other ring was seeded separately (another pod
	// range or another seed list); merging it would give addresses two owners.
	ErrDifferentGenesis = errors.New("ring was seeded by a different genesis")
	// ErrInvariant: a ring breaks an invariant (corrupt or malicious input).
	ErrInvariant = errors.New("ring invariant broken")
	// ErrNotOwner: an owner operation on a span the caller does not own.
	ErrNotOwner = errors.New("span not owned by this node")
)

// Kind says how a label came to be.
type Kind uint8

const (
	// KindOwned is a label written by the span's owner (genesis, transfer).
	KindOwned Kind = 0
	// KindClaim is a reclaim of a dead node's span (rmpeer).
	KindClaim Kind = 1
)

// MaxNameLen is the longest owner name the ring accepts.
const MaxNameLen = 253

// Label is who owns an address and how recent that knowledge is.
// The zero Label means unowned (only before genesis).
type Label struct {
	Version uint64
	Kind    Kind
	Owner   string
}

// Less reports whether a loses to b.
func (a Label) Less(b Label) bool { return compareLabel(a, b) < 0 }

func compareLabel(a, b Label) int {
	if c := cmp.Compare(a.Version, b.Version); c != 0 {
		return c
	}
	// KindOwned beats KindClaim: the smaller kind is greater.
	if c := cmp.Compare(b.Kind, a.Kind); c != 0 {
		return c
	}
	// The smaller owner wins: it is the greater label.
	return strings.Compare(b.Owner, a.Owner)
}

func maxLabel(a, b Label) Label {
	if compareLabel(a, b) >= 0 {
		return a
	}
	return b
}

// Entry labels the addresses from Start (an offset from the range's first
// address) up to the next entry's Start, or the end of the range.
type Entry struct {
	Start uint32
	Label
}

// Free is an owner's published count of free addresses, a register only the
// owner writes (higher Version wins; equal versions take the larger count).
type Free struct {
	Version uint64
	Count   uint64
}

// Genesis identifies how a ring was seeded.
type Genesis [16]byte

func (g Genesis) String() string { return hex.EncodeToString(g[:]) }

// IsZero reports whether g is unset.
func (g Genesis) IsZero() bool { return g == Genesis{} }

// Ring is the pod range with its owners. The zero Ring is not usable; build
// one with NewGenesis or NewEmpty.
type Ring struct {
	prefix  netip.Prefix
	base    netip.Addr // the first address of the range
	size    uint64
	genesis Genesis // zero: not seeded yet, entries empty
	partial bool    // a delta: the zero label (unknown) is allowed
	entries []Entry
	free    map[string]Free
}

// Span is a half-open range of offsets [Start, End).
type Span struct {
	Start uint64
	End   uint64
}

// Len is the number of addresses in s.
func (s Span) Len() uint64 { return s.End - s.Start }

// MaxHostBits is the most address bits a ring spans (offsets are 32-bit):
// an IPv6 range of the ring is /96 or longer. (An IPv6-only cluster with a
// larger pod range runs its ring over the range's first /96: see package
// ipalloc.)
const MaxHostBits = 32

func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "":
		return fmt.Errorf("pod range %v: want an IPv4 or IPv6 prefix", p)
	case p.Addr().Is4() && (p.Bits() < 1 || p.Bits() > 30):
		return fmt.Errorf("pod range %v: want a prefix length between /1 and /30", p)
	case p.Addr().Is6() && (p.Bits() < 128-MaxHostBits || p.Bits() > 126):
		return fmt.Errorf("pod range %v: want an IPv6 prefix length between /%d and /126", p, 128-MaxHostBits)
	}
	return nil
}

// NewEmpty returns an unseeded ring over cidr: no owners; it adopts the
// genesis of the first seeded ring merged into it. cidr is an IPv4 range
// (/1 to /30) or an IPv6 range (/96 to /126).
func NewEmpty(cidr netip.Prefix) (*Ring, error) {
	if err := checkPrefix(cidr); err != nil {
		return nil, err
	}
	cidr = cidr.Masked()
	return &Ring{
		prefix: cidr,
		base:   cidr.Addr(),
		size:   uint64(1) << (cidr.Addr().BitLen() - cidr.Bits()),
		free:   map[string]Free{},
	}, nil
}

// GenesisID is the identity of the ring seeded over cidr by seed.
func GenesisID(cidr netip.Prefix, seed []string) Genesis {
	h := sha256.New()
	fmt.Fprintf(h, "weft-ring-v1\n%s\n", cidr.Masked())
	for _, s := range normaliseSeed(seed) {
		fmt.Fprintf(h, "%s\n", s)
	}
	var g Genesis
	copy(g[:], h.Sum(nil))
	return g
}

func normaliseSeed(seed []string) []string {
	out := make([]string, 0, len(seed))
	for _, s := range seed {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// NewGenesis returns the ring every node computes from the same cidr and
// seed list: the list sorted and deduplicated, the range cut into 2^k
// aligned blocks (2^k the smallest power of two >= the number of seeds) and
// handed out in order, each node taking an equal-ish run of consecutive
// blocks. Every label has version 1.
func NewGenesis(cidr netip.Prefix, seed []string) (*Ring, error) {
	r, err := NewEmpty(cidr)
	if err != nil {
		return nil, err
	}
	nodes := normaliseSeed(seed)
	if len(nodes) == 0 {
		return nil, fmt.Errorf("genesis of %v: the seed list is empty", r.prefix)
	}
	for _, n := range nodes {
		if err := checkName(n); err != nil {
			return nil, fmt.Errorf("genesis of %v: %w", r.prefix, err)
		}
	}
	k := bits.Len(uint(len(nodes) - 1)) // 2^k >= len(nodes)
	if uint64(1)<<k > r.size {
		return nil, fmt.Errorf("genesis of %v: %d seeds do not fit in %d addresses", r.prefix, len(nodes), r.size)
	}
	blocks := uint64(1) << k
	blockSize := r.size / blocks
	n := uint64(len(nodes))
	var start uint64
	for i, name := range nodes {
		count := blocks / n
		if uint64(i) < blocks%n {
			count++
		}
		r.entries = append(r.entries, Entry{Start: uint32(start), Label: Label{Version: 1, Owner: name}})
		start += count * blockSize
	}
	r.genesis = GenesisID(cidr, nodes)
	return r, nil
}

func checkName(n string) error {
	if n == "" || len(n) > MaxNameLen {
		return fmt.Errorf("node name %q: want 1 to %d bytes", n, MaxNameLen)
	}
	return nil
}

// Prefix is the pod range.
func (r *Ring) Prefix() netip.Prefix { return r.prefix }

// Size is the number of addresses in the range.
func (r *Ring) Size() uint64 { return r.size }

// Genesis is the ring's identity, zero while unseeded.
func (r *Ring) Genesis() Genesis { return r.genesis }

// Partial reports whether r is a delta (see Delta): it tells only about
// some addresses.
func (r *Ring) Partial() bool { return r.partial }

// Seeded reports whether the ring has a genesis.
func (r *Ring) Seeded() bool { return !r.genesis.IsZero() }

// Entries returns a copy of the entries.
func (r *Ring) Entries() []Entry { return slices.Clone(r.entries) }

// Addr is the address at offset off.
func (r *Ring) Addr(off uint64) netip.Addr {
	if r.base.Is4() {
		b := r.base.As4()
		v := binary.BigEndian.Uint32(b[:]) + uint32(off)
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	// An IPv6 ring spans at most 2^32 aligned addresses: only the last
	// four bytes vary.
	b := r.base.As16()
	v := binary.BigEndian.Uint32(b[12:]) + uint32(off)
	binary.BigEndian.PutUint32(b[12:], v)
	return netip.AddrFrom16(b)
}

// Offset is the offset of a in the range, false when a is outside it.
func (r *Ring) Offset(a netip.Addr) (uint64, bool) {
	if a.Is4() != r.base.Is4() || a.Is4In6() || !r.prefix.Contains(a) {
		return 0, false
	}
	if a.Is4() {
		x, y := a.As4(), r.base.As4()
		return uint64(binary.BigEndian.Uint32(x[:]) - binary.BigEndian.Uint32(y[:])), true
	}
	x, y := a.As16(), r.base.As16()
	if [12]byte(x[:12]) != [12]byte(y[:12]) {
		return 0, false
	}
	return uint64(binary.BigEndian.Uint32(x[12:]) - binary.BigEndian.Uint32(y[12:])), true
}

// Clone returns a deep copy.
func (r *Ring) Clone() *Ring {
	c := *r
	c.entries = slices.Clone(r.entries)
	c.free = make(map[string]Free, len(r.free))
	for k, v := range r.free {
		c.free[k] = v
	}
	return &c
}

// Equal reports whether r and o hold the same knowledge.
func (r *Ring) Equal(o *Ring) bool {
	if r.prefix != o.prefix || r.genesis != o.genesis || r.partial != o.partial || !slices.Equal(r.entries, o.entries) || len(r.free) != len(o.free) {
		return false
	}
	for k, v := range r.free {
		if w, ok := o.free[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// end is the end offset of entry i.
func (r *Ring) end(i int) uint64 {
	if i+1 < len(r.entries) {
		return uint64(r.entries[i+1].Start)
	}
	return r.size
}

// LabelAt is the label of offset off (zero when unseeded).
func (r *Ring) LabelAt(off uint64) Label {
	i, found := slices.BinarySearchFunc(r.entries, off, func(e Entry, o uint64) int { return cmp.Compare(uint64(e.Start), o) })
	if found {
		return r.entries[i].Label
	}
	if i == 0 {
		return Label{}
	}
	return r.entries[i-1].Label
}

// OwnerOf is the owner of address a, "" if none.
func (r *Ring) OwnerOf(a netip.Addr) string {
	off, ok := r.Offset(a)
	if !ok {
		return ""
	}
	return r.LabelAt(off).Owner
}

// Spans returns the spans owned by owner, adjacent ones joined, in order.
func (r *Ring) Spans(owner string) []Span {
	var out []Span
	for i, e := range r.entries {
		if e.Owner != owner {
			continue
		}
		s := Span{uint64(e.Start), r.end(i)}
		if n := len(out); n > 0 && out[n-1].End == s.Start {
			out[n-1].End = s.End
			continue
		}
		out = append(out, s)
	}
	return out
}

// SpansByOwner returns the spans of every owner, as Spans would, in one
// pass over the ring: asking Spans for each owner costs owners × entries.
func (r *Ring) SpansByOwner() map[string][]Span {
	out := map[string][]Span{}
	for i, e := range r.entries {
		if e.Owner == "" {
			continue
		}
		s := Span{uint64(e.Start), r.end(i)}
		spans := out[e.Owner]
		if n := len(spans); n > 0 && spans[n-1].End == s.Start {
			spans[n-1].End = s.End
			continue
		}
		out[e.Owner] = append(spans, s)
	}
	return out
}

// CIDRsByOwner returns CIDRs of every owner in one pass over the ring.
func (r *Ring) CIDRsByOwner() map[string][]netip.Prefix {
	spans := r.SpansByOwner()
	out := make(map[string][]netip.Prefix, len(spans))
	for o, ss := range spans {
		var ps []netip.Prefix
		for _, s := range ss {
			ps = append(ps, r.SpanCIDRs(s)...)
		}
		out[o] = ps
	}
	return out
}

// Owned is the number of addresses owner holds.
func (r *Ring) Owned(owner string) uint64 {
	var n uint64
	for _, s := range r.Spans(owner) {
		n += s.Len()
	}
	return n
}

// Delta returns a partial ring that holds r's labels on spans only (the
// zero label, which every label beats, elsewhere) and the free registers of
// owners. Merging it has the same effect on those spans as merging r, so it
// is what a node broadcasts after a local change: a few entries instead of
// the whole ring. The delta of an unseeded ring carries free registers only.
func (r *Ring) Delta(spans []Span, owners ...string) *Ring {
	d := &Ring{prefix: r.prefix, base: r.base, size: r.size, genesis: r.genesis, partial: r.Seeded(), free: map[string]Free{}}
	if r.Seeded() {
		d.entries = []Entry{{Start: 0}}
		for _, s := range spans {
			s.End = min(s.End, r.size)
			if ps, err := r.pieces(s); err == nil {
				for _, p := range ps {
					d.set(p.span, p.label)
				}
			}
		}
	}
	for _, o := range owners {
		if f, ok := r.free[o]; ok {
			d.free[o] = f
		}
	}
	return d
}

// Owners returns every node owning at least one address, sorted.
func (r *Ring) Owners() []string {
	var out []string
	for _, e := range r.entries {
		if e.Owner != "" {
			out = append(out, e.Owner)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// CIDRs returns the spans of owner as the fewest prefixes that cover them.
func (r *Ring) CIDRs(owner string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range r.Spans(owner) {
		out = append(out, r.SpanCIDRs(s)...)
	}
	return out
}

// SpanCIDRs cuts s into the fewest aligned prefixes.
func (r *Ring) SpanCIDRs(s Span) []netip.Prefix {
	var out []netip.Prefix
	for s.Start < s.End {
		// The largest aligned block starting at s.Start that fits.
		size := uint64(1) << MaxHostBits
		if s.Start != 0 {
			size = s.Start & -s.Start
		}
		for size > s.End-s.Start {
			size >>= 1
		}
		a := r.Addr(s.Start)
		out = append(out, netip.PrefixFrom(a, a.BitLen()-bits.TrailingZeros64(size)))
		s.Start += size
	}
	return out
}

// FreeOf returns the free register of owner.
func (r *Ring) FreeOf(owner string) (Free, bool) {
	f, ok := r.free[owner]
	return f, ok
}

// FreeCounts returns a copy of every owner's free register.
func (r *Ring) FreeCounts() map[string]Free {
	out := make(map[string]Free, len(r.free))
	for k, v := range r.free {
		out[k] = v
	}
	return out
}
