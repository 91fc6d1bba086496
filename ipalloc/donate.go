package ipalloc

import (
	"context"
	"encoding/json"
	"fmt"
	"math/bits"
	"slices"

	"github.com/weftnet/weft/ipalloc/ring"
)

// Messages between allocators, JSON:
//
//	{"v":1,"t":"donate?","id":7}                  please give me a share of your free addresses
//	{"v":1,"t":"donate!","id":7,"ring":"..."}     here is my ring after giving you a span
//	{"v":1,"t":"donate!","id":7,"reason":"..."}   I have nothing to give
//
// The answer's ring carries the transfer (a version bump on the span given),
// so the requester owns the span as soon as it merges it, like any ring
// from gossip.
type message struct {
	V      int    `json:"v"`
	Type   string `json:"t"`
	ID     uint64 `json:"id"`
	Ring   []byte `json:"ring,omitempty"`
	Reason string `json:"reason,omitempty"`
}

const (
	msgVersion = 1
	msgRequest = "donate?"
	msgAnswer  = "donate!"
	maxMessage = 8 << 20
)

type inbound struct {
	from string
	id   uint64
}

// HandleMessage takes a message another node's allocator sent through the
// Transport. It does not block; the daemon may call it from its network
// goroutine. msg is not kept after the call.
func (a *Allocator) HandleMessage(from string, msg []byte) error {
	if len(msg) > maxMessage {
		return fmt.Errorf("ipalloc message from %s: %d bytes is too long", from, len(msg))
	}
	var m message
	if err := json.Unmarshal(msg, &m); err != nil {
		return fmt.Errorf("ipalloc message from %s: %w", from, err)
	}
	if m.V != msgVersion {
		return fmt.Errorf("ipalloc message from %s: version %d, this weft speaks %d", from, m.V, msgVersion)
	}
	switch m.Type {
	case msgRequest:
		if from == "" || from == a.cfg.Self || len(from) > ring.MaxNameLen {
			return fmt.Errorf("ipalloc donation request from %q: bad sender", from)
		}
		select {
		case a.inbox <- inbound{from: from, id: m.ID}:
		default:
			a.log.Warn("too many donation requests queued; dropping one", "peer", from)
		}
		return nil
	case msgAnswer:
		var err error
		if len(m.Ring) > 0 {
			err = a.MergeRemote(m.Ring)
		} else {
			a.log.Info("peer has no addresses to give", "peer", from, "reason", m.Reason)
		}
		a.mu.Lock()
		ch := a.waiting[m.ID]
		a.mu.Unlock()
		if ch != nil {
			select {
			case ch <- len(m.Ring) > 0 && err == nil:
			default:
			}
		}
		return err
	default:
		return fmt.Errorf("ipalloc message from %s: unknown type %q", from, m.Type)
	}
}

// serveDonation answers one request: split off a free block, transfer it,
// persist, then answer with the new ring and broadcast it.
func (a *Allocator) serveDonation(in inbound) {
	live := a.livePeers()
	a.mu.Lock()
	reason := ""
	var data, delta []byte // the whole ring for the requester, a delta for everyone
	span, ok := a.donationSpan(live)
	switch {
	case !ok:
		reason = fmt.Sprintf("%s has %d free addresses and no free block to give", a.cfg.Self, a.free)
	default:
		before := a.ring.Clone()
		err := a.ring.Transfer(a.cfg.Self, in.from, span)
		if err == nil {
			err = a.saveRingLocked()
		}
		if err != nil {
			a.ring = before
			reason = "cannot donate: " + err.Error()
			a.log.Error("donation failed", "peer", in.from, "err", err)
			break
		}
		a.recompute()
		data = a.ring.Encode(a.cfg.Self)
		delta = a.ring.Delta([]ring.Span{span}, a.cfg.Self).Encode(a.cfg.Self)
		a.log.Info("donated addresses", "peer", in.from, "cidr", a.ring.SpanCIDRs(span), "count", span.Len())
	}
	a.mu.Unlock()
	if data != nil {
		a.signal()
	}
	msg, _ := json.Marshal(message{V: msgVersion, Type: msgAnswer, ID: in.id, Ring: data, Reason: reason})
	if a.cfg.Transport != nil {
		// In a goroutine: a requester that cannot be reached must not hold
		// up the next request.
		a.bg.Add(1)
		go func() {
			defer a.bg.Done()
			sctx, cancel := context.WithTimeout(a.bgCtx, a.cfg.RequestTimeout)
			defer cancel()
			if err := a.cfg.Transport.Send(sctx, in.from, msg); err != nil {
				a.log.Warn("cannot answer a donation request; the ring reaches it by gossip", "peer", in.from, "err", err)
			}
		}()
	}
	if delta != nil && a.cfg.Broadcast != nil {
		a.cfg.Broadcast(delta)
	}
}

// donationSpan finds the aligned block to give away: the largest power of
// two up to half the free addresses (at least one) with no allocation in
// it, taken from the top of this node's usable spans. Callers hold a.mu.
func (a *Allocator) donationSpan(live []string) (ring.Span, bool) {
	if ok, _ := a.readiness(live); !ok || a.free == 0 {
		return ring.Span{}, false
	}
	used := make([]uint64, 0, len(a.byOff))
	for off := range a.byOff {
		used = append(used, off)
	}
	slices.Sort(used)
	clear := func(lo, hi uint64) bool {
		i, _ := slices.BinarySearch(used, lo)
		return i == len(used) || used[i] >= hi
	}
	budget := 1 << 18 // blocks examined at most
	target := uint64(1) << (bits.Len64(max(1, a.free/2)) - 1)
	for size := target; size >= 1; size /= 2 {
		for i := len(a.usable) - 1; i >= 0; i-- {
			s := a.usable[i]
			if s.Len() < size {
				continue
			}
			for b := (s.End - size) / size * size; b >= s.Start; b -= size {
				if budget--; budget < 0 {
					return ring.Span{}, false
				}
				if clear(b, b+size) {
					return ring.Span{Start: b, End: b + size}, true
				}
				if b < size {
					break
				}
			}
		}
	}
	return ring.Span{}, false
}
