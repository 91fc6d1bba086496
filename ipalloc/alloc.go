package ipalloc

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/weftnet/weft/ipalloc/ring"
)

// recompute derives the usable spans and the free count from the ring, the
// pending claims and the allocations, and publishes the free count.
// Callers hold a.mu.
func (a *Allocator) recompute() {
	usable := a.ring.Spans(a.cfg.Self)
	for _, c := range a.claims {
		usable = subtract(usable, c.span())
	}
	// Never the network or broadcast address of the whole range.
	usable = subtract(usable, ring.Span{Start: 0, End: 1})
	usable = subtract(usable, ring.Span{Start: a.ring.Size() - 1, End: a.ring.Size()})
	var n uint64
	for _, s := range usable {
		n += s.Len()
	}
	for off := range a.byOff {
		if inSpans(usable, off) {
			n--
		}
	}
	a.usable, a.free = usable, n
	a.publishFree()
	if n > 0 {
		a.wakeLocked()
	}
}

// publishFree puts this node's free count in the ring for others to see.
// Addresses in claims not confirmed yet count too: they are not free to
// hand out here yet, but they are not gone, so a peer that finds no other
// space is told to retry rather than that the range is full.
func (a *Allocator) publishFree() {
	n := a.free
	for _, c := range a.claims {
		n += c.span().Len()
	}
	a.ring.SetFree(a.cfg.Self, n)
}

// subtract removes cut from sorted, disjoint spans.
func subtract(spans []ring.Span, cut ring.Span) []ring.Span {
	var out []ring.Span
	for _, s := range spans {
		if s.End <= cut.Start || s.Start >= cut.End {
			out = append(out, s)
			continue
		}
		if s.Start < cut.Start {
			out = append(out, ring.Span{Start: s.Start, End: cut.Start})
		}
		if s.End > cut.End {
			out = append(out, ring.Span{Start: cut.End, End: s.End})
		}
	}
	return out
}

func inSpans(spans []ring.Span, off uint64) bool {
	i, found := slices.BinarySearchFunc(spans, off, func(s ring.Span, o uint64) int { return cmp.Compare(s.Start, o) })
	if found {
		return true
	}
	return i > 0 && off < spans[i-1].End
}

// readiness says whether this node may allocate, and if not, why: it must
// have heard a whole ring from a live peer since it started, unless it is
// alone (no other owner in the ring and no other live member). Callers
// hold a.mu; live is what Config.Peers said, without this node.
func (a *Allocator) readiness(live []string) (bool, string) {
	switch {
	case !a.ring.Seeded():
		return false, "this node is not in the genesis seed list and has not heard the ring from any peer yet"
	case a.synced:
		return true, ""
	case len(live) == 0 && a.aloneInRing():
		return true, ""
	case len(live) == 0:
		return false, "waiting to hear the ring from a peer before allocating: other nodes own parts of the range and none is reachable " +
			"(this node's state may be stale; weft rmpeer reclaims the ranges of nodes that are gone)"
	case a.refused != "":
		return false, "the peers' address ring has another genesis (" + a.refused + "): every node must run with the same --pod-cidr and --ipalloc-init; " +
			"this node serves no address until they agree"
	}
	return false, "waiting to hear the ring from a live peer before allocating (this node's state may be stale)"
}

// Ready reports whether Allocate can hand out addresses now, and if not, why.
func (a *Allocator) Ready() (bool, string) {
	live := a.livePeers()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readiness(live)
}

// Allocate returns the address of key, handing out a new one if key has
// none; the allocation is on disk before Allocate returns. meta (pod
// namespace and name, netns) is stored with it. When this node has no free
// address it has peers asked for a share (see seek.go) and waits for one
// until ctx ends or the peers asked gave nothing; errors wrap ErrFull (the
// whole range is full) or ErrNoSpace (retry later). It never waits on a
// peer longer than ctx allows.
func (a *Allocator) Allocate(ctx context.Context, key Key, meta map[string]string) (netip.Addr, error) {
	if key.ContainerID == "" || key.IfName == "" || len(key.ContainerID) > 1024 || len(key.IfName) > 64 {
		return netip.Addr{}, fmt.Errorf("allocate: bad key %q/%q: want a container ID and an interface name", key.ContainerID, key.IfName)
	}
	var round uint64
	waited := false
	for {
		live := a.livePeers()
		a.mu.Lock()
		if w, ok := a.writing[key]; ok {
			// An Allocate of the same key is writing it: serve what it
			// wrote (or try again if the write failed).
			a.mu.Unlock()
			if err := waitWrite(ctx, w); err != nil {
				return netip.Addr{}, err
			}
			continue
		}
		addr, done, w, err := a.allocateLocked(key, meta, live)
		if done {
			a.mu.Unlock()
			if w != nil {
				err = a.persist(w)
			}
			return addr, err
		}
		// A round that ended since this call began waiting, without
		// space for it: say why rather than ask the same peers again.
		if waited && a.rounds != round && !a.seeking && a.seekErr != nil {
			err := a.seekErr
			a.mu.Unlock()
			return netip.Addr{}, err
		}
		if !waited || a.rounds != round {
			round, waited = a.rounds, true
		}
		wait, err := a.needSpaceLocked(live)
		asking := a.seeking
		a.mu.Unlock()
		if err != nil {
			return netip.Addr{}, err
		}
		select {
		case <-wait:
		case <-ctx.Done():
			why := "no free address on this node yet"
			if asking {
				why += " while peers are asked for a share"
			}
			return netip.Addr{}, noSpaceError{fmt.Sprintf("%s: %v", why, ctx.Err())}
		}
	}
}

// allocateLocked allocates from this node's own space. done is false when
// it has no free address. A new address is taken in memory at once and
// returned with w, which the caller writes with persist after unlocking
// a.mu: the write and its fsync then run beside other ADDs and are
// committed with theirs.
func (a *Allocator) allocateLocked(key Key, meta map[string]string, live []string) (addr netip.Addr, done bool, w *allocWrite, err error) {
	// Not even an existing allocation is served before the node is ready:
	// its range may have been reclaimed while it was away.
	if ok, why := a.readiness(live); !ok {
		return netip.Addr{}, true, nil, noSpaceError{why}
	}
	if al, ok := a.allocs[key]; ok {
		if a.ring.OwnerOf(al.Addr) == a.cfg.Self {
			return al.Addr, true, nil, nil
		}
		// The range went to another node (reclaimed while this one was
		// away): never serve it again.
		a.log.Warn("dropping an allocation whose range this node no longer owns", "key", key, "addr", al.Addr, "owner", a.ring.OwnerOf(al.Addr))
		if err := a.releaseLocked([]Key{key}); err != nil {
			return netip.Addr{}, true, nil, err
		}
	}
	off, ok := a.pick()
	if !ok {
		return netip.Addr{}, false, nil, nil
	}
	al := &Allocation{Key: key, Addr: a.ring.Addr(off), Meta: maps.Clone(meta), Created: a.cfg.Now().UTC()}
	w = &allocWrite{al: al, done: make(chan struct{})}
	a.writing[key] = w
	a.allocs[key] = al
	a.byOff[off] = key
	a.cursor = off + 1
	a.free--
	a.publishFree()
	return al.Addr, true, w, nil
}

// allocWrite is a new allocation on its way to disk.
type allocWrite struct {
	al   *Allocation
	done chan struct{} // closed once written or given up
	err  error         // set before done is closed
}

// persist writes a new allocation (outside a.mu) and ends its write: on
// failure the address is free again and the error says so.
func (a *Allocator) persist(w *allocWrite) error {
	err := a.store.saveAlloc(*w.al)
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.writing, w.al.Key)
	if err != nil {
		w.err = fmt.Errorf("allocate %s for %v: %w", w.al.Addr, w.al.Key, err)
		if a.allocs[w.al.Key] == w.al {
			delete(a.allocs, w.al.Key)
			if off, ok := a.ring.Offset(w.al.Addr); ok && a.byOff[off] == w.al.Key {
				delete(a.byOff, off)
			}
			a.recompute()
		}
	}
	close(w.done)
	return w.err
}

// waitWrite waits for another call's write of the same key to end.
func waitWrite(ctx context.Context, w *allocWrite) error {
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		return noSpaceError{fmt.Sprintf("the address of %v is still being written: %v", w.al.Key, ctx.Err())}
	}
}

// pick finds a free usable offset, starting after the last one handed out
// so that a released address is not reused at once.
func (a *Allocator) pick() (uint64, bool) {
	if a.free == 0 {
		return 0, false
	}
	for pass := 0; pass < 2; pass++ {
		for _, s := range a.usable {
			start := s.Start
			if pass == 0 {
				if s.End <= a.cursor {
					continue
				}
				start = max(start, a.cursor)
			}
			for off := start; off < s.End; off++ {
				if _, used := a.byOff[off]; !used {
					return off, true
				}
			}
		}
	}
	return 0, false
}

// Release frees the address of key. It reports the address and whether
// key had one; releasing an unknown key is not an error.
func (a *Allocator) Release(ctx context.Context, key Key) (netip.Addr, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// An allocation still being written is released once it is on disk,
	// so that the delete is never overtaken by the write.
	for a.writing[key] != nil {
		w := a.writing[key]
		a.mu.Unlock()
		<-w.done // persist always ends, whatever ctx does
		a.mu.Lock()
	}
	al, ok := a.allocs[key]
	if !ok {
		return netip.Addr{}, false, nil
	}
	if err := a.releaseLocked([]Key{key}); err != nil {
		return netip.Addr{}, false, err
	}
	return al.Addr, true, nil
}

func (a *Allocator) releaseLocked(keys []Key) error {
	if len(keys) == 0 {
		return nil
	}
	if err := a.store.deleteAllocs(keys); err != nil {
		return fmt.Errorf("release %d allocations: %w", len(keys), err)
	}
	for _, k := range keys {
		al := a.allocs[k]
		delete(a.allocs, k)
		delete(a.lost, k)
		if off, ok := a.ring.Offset(al.Addr); ok && a.byOff[off] == k {
			delete(a.byOff, off)
		}
	}
	a.recompute()
	return nil
}

// List returns every allocation of this node, by address.
func (a *Allocator) List() []Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Allocation, 0, len(a.allocs))
	for _, al := range a.allocs {
		c := a.withPair(*al)
		c.Meta = maps.Clone(al.Meta)
		out = append(out, c)
	}
	slices.SortFunc(out, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
	return out
}

// GC releases every allocation whose key is not in keep and returns them.
func (a *Allocator) GC(ctx context.Context, keep []Key) ([]Allocation, error) {
	want := map[Key]bool{}
	for _, k := range keep {
		want[k] = true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var keys []Key
	var out []Allocation
	for k, al := range a.allocs {
		// An allocation being written belongs to an ADD in progress.
		if !want[k] && a.writing[k] == nil {
			keys = append(keys, k)
			out = append(out, a.withPair(*al))
		}
	}
	if err := a.releaseLocked(keys); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	slices.SortFunc(out, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
	return out, nil
}
