package ipalloc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/weftnet/weft/ipalloc/ring"
)

// LocalState is this node's whole ring, encoded, for memberlist push/pull
// (tens of kilobytes for a thousand nodes). The slice is the caller's.
func (a *Allocator) LocalState() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ring.Encode(a.cfg.Self)
}

// MergeRemote folds a ring from gossip (LocalState of a peer, or a delta
// it broadcast) into this node's. A ring of another
// genesis is refused with an error wrapping ErrDifferentGenesis (logged and
// shown in Status); an undecodable one with another error. Either way this
// node's ring is unchanged.
func (a *Allocator) MergeRemote(data []byte) error {
	live := a.livePeers()
	a.mu.Lock()
	owned := a.ring.Owned(a.cfg.Self)
	changed, err := a.mergeLocked(data, live)
	var delta []byte
	if a.ring.Owned(a.cfg.Self) > owned {
		// Space came to this node (a donation): tell everyone its new free
		// count now, or peers short of space would not ask it for a share
		// until the next push/pull.
		delta = a.ring.Delta(nil, a.cfg.Self).Encode(a.cfg.Self)
	}
	a.mu.Unlock()
	if changed {
		a.signal()
	}
	if delta != nil && a.cfg.Broadcast != nil {
		a.cfg.Broadcast(delta)
	}
	return err
}

func (a *Allocator) mergeLocked(data []byte, live []string) (bool, error) {
	r, origin, err := ring.Decode(data)
	if err != nil {
		if now := a.cfg.Now(); now.Sub(a.lastRecvErr) > time.Minute {
			a.lastRecvErr = now
			a.log.Warn("ignoring an unreadable ring from gossip", "peer", origin, "err", err)
		}
		return false, fmt.Errorf("ring from gossip: %w", err)
	}
	changed, err := a.ring.Merge(r)
	if errors.Is(err, ring.ErrDifferentGenesis) {
		msg := fmt.Sprintf("refused the ring of %s: %v", origin, err)
		if now := a.cfg.Now(); msg != a.refused || now.Sub(a.refusedAt) > time.Minute {
			a.log.Error("refusing a ring seeded by another genesis: the two sides would hand out the same addresses; "+
				"give every node the same --pod-cidr and --ipalloc-init", "peer", origin, "err", err)
			a.refusedAt = now
		}
		a.refused = msg
		return false, fmt.Errorf("ring from %s: %w", origin, err)
	}
	if err != nil {
		return false, fmt.Errorf("ring from %s: %w", origin, err)
	}
	if origin != "" && origin != a.cfg.Self && r.Seeded() {
		// Only a whole ring tells a restarted node what it lost while away.
		if !a.synced && !r.Partial() {
			a.log.Info("heard the ring from a peer; allocating", "peer", origin)
			a.synced = true
		}
		for _, c := range a.claims {
			if all, _ := r.Holds(c.span(), c.label()); all {
				c.acks[origin] = true
			}
		}
	}
	claimsChanged := a.checkClaims(live)
	if changed && !claimsChanged {
		if err := a.saveRingLocked(); err != nil {
			a.log.Error("cannot save the ring", "err", err)
		}
	}
	a.recompute()
	if changed {
		a.warnLost()
	}
	return changed, nil
}

// warnLost logs, once each, allocations whose addresses this node no
// longer owns.
func (a *Allocator) warnLost() {
	for k, al := range a.allocs {
		if owner := a.ring.OwnerOf(al.Addr); owner != a.cfg.Self && !a.lost[k] {
			a.lost[k] = true
			a.log.Warn("an allocation's address now belongs to another node; it will not be served again",
				"key", k, "addr", al.Addr, "owner", owner)
		}
	}
}

// checkClaims drops claims that lost to another label and confirms those
// every live peer has echoed. It reports whether the claims changed (and
// were saved). Callers hold a.mu.
func (a *Allocator) checkClaims(live []string) bool {
	if len(a.claims) == 0 {
		return false
	}
	var keep []*pendingClaim
	for _, c := range a.claims {
		if _, some := a.ring.Holds(c.span(), c.label()); !some {
			a.log.Warn("reclaim lost to another node's label", "dead", c.Dead, "cidr", a.ring.SpanCIDRs(c.span()),
				"owner", a.ring.OwnerOf(a.ring.Addr(c.Start)))
			continue
		}
		var missing []string
		for _, p := range live {
			if !c.acks[p] {
				missing = append(missing, p)
			}
		}
		if len(missing) == 0 {
			a.log.Info("reclaim confirmed by every live peer; allocating from it", "dead", c.Dead, "cidr", a.ring.SpanCIDRs(c.span()))
			continue
		}
		keep = append(keep, c)
	}
	if len(keep) == len(a.claims) {
		return false
	}
	a.claims = keep
	if err := a.saveRingLocked(); err != nil {
		a.log.Error("cannot save the ring", "err", err)
	}
	a.recompute()
	return true
}

func (a *Allocator) saveRingLocked() error {
	claims := make([]storedClaim, 0, len(a.claims))
	for _, c := range a.claims {
		claims = append(claims, c.storedClaim)
	}
	return a.store.saveRing(a.ring.Encode(a.cfg.Self), claims)
}

// Ranges returns each owner's addresses as the fewest CIDRs: the WireGuard
// AllowedIPs and routes of each node.
func (a *Allocator) Ranges() map[string][]netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ring.CIDRsByOwner()
}

// Rmpeer reclaims the address ranges of node, which must be dead (not
// among the live peers), for this node. It returns a message for the
// operator. Reclaiming a node that owns nothing (already reclaimed, here or
// elsewhere) is a no-op. This node allocates from the ranges only once
// every live peer has confirmed the claim (see the package comment).
func (a *Allocator) Rmpeer(ctx context.Context, node string) (string, error) {
	if node == a.cfg.Self {
		return "", fmt.Errorf("rmpeer %s: that is this node; run rmpeer on another node", node)
	}
	live := a.livePeers()
	if slices.Contains(live, node) {
		return "", fmt.Errorf("rmpeer %s: the node is alive in the mesh; stop it (or wait until the mesh sees it gone) before reclaiming its addresses", node)
	}
	a.mu.Lock()
	if !a.ring.Seeded() {
		a.mu.Unlock()
		return "", fmt.Errorf("rmpeer %s: this node has not heard the ring yet; retry once it has joined the mesh", node)
	}
	before := a.ring.Clone()
	claims, err := a.ring.Reclaim(a.cfg.Self, node)
	if err != nil {
		a.mu.Unlock()
		return "", fmt.Errorf("rmpeer %s: %w", node, err)
	}
	if len(claims) == 0 {
		a.mu.Unlock()
		return fmt.Sprintf("%s owns no addresses: nothing to reclaim (already reclaimed?)", node), nil
	}
	var n uint64
	var cidrs []netip.Prefix
	oldClaims := a.claims
	for _, c := range claims {
		n += c.Span.Len()
		cidrs = append(cidrs, a.ring.SpanCIDRs(c.Span)...)
		a.claims = append(a.claims, &pendingClaim{
			storedClaim: storedClaim{Dead: node, Start: c.Span.Start, End: c.Span.End, Version: c.Label.Version, Kind: c.Label.Kind, Owner: c.Label.Owner},
			acks:        map[string]bool{},
		})
	}
	if err := a.saveRingLocked(); err != nil {
		a.ring, a.claims = before, oldClaims
		a.mu.Unlock()
		return "", fmt.Errorf("rmpeer %s: %w", node, err)
	}
	a.log.Info("reclaimed the ranges of a dead node", "dead", node, "cidr", cidrs, "count", n)
	a.checkClaims(live)
	a.recompute()
	pending := len(a.claims) > 0
	spans := make([]ring.Span, 0, len(claims))
	for _, c := range claims {
		spans = append(spans, c.Span)
	}
	data := a.ring.Delta(spans, a.cfg.Self).Encode(a.cfg.Self)
	a.mu.Unlock()
	a.signal()
	if a.cfg.Broadcast != nil {
		a.cfg.Broadcast(data)
	}
	msg := fmt.Sprintf("reclaimed %d addresses of %s (%v) for %s", n, node, cidrs, a.cfg.Self)
	if pending {
		msg += "; they are used once every live peer has confirmed the claim"
	}
	return msg, nil
}
