package ipalloc

import (
	"net/netip"
	"slices"
	"time"
)

// Status is what `weft status ipam` shows. Its JSON is part of the
// documented `--json` output.
type Status struct {
	Self        string       `json:"self"`
	Range       netip.Prefix `json:"range"`
	Range6      netip.Prefix `json:"range6,omitzero"` // the IPv6 range paired with Range (dual stack)
	Size        uint64       `json:"size"`
	Genesis     string       `json:"genesis,omitempty"` // empty: this node has not joined a ring yet
	Ready       bool         `json:"ready"`
	Reason      string       `json:"reason,omitempty"` // why not ready
	Allocations int          `json:"allocations"`      // allocations held by this node
	Nodes       []NodeStatus `json:"nodes"`
	// Addresses owned by nodes that are not reachable, and their share of
	// the range (0 to 1): candidates for `weft rmpeer` if the nodes are gone.
	UnreachableAddresses uint64  `json:"unreachableAddresses"`
	UnreachableShare     float64 `json:"unreachableShare"`
	// RefusedGenesis, when set, says this node refused a ring seeded by
	// another genesis (another pod range or seed list) and from whom.
	RefusedGenesis string        `json:"refusedGenesis,omitempty"`
	PendingClaims  []ClaimStatus `json:"pendingClaims,omitempty"`
	// Asking is set while this node asks peers for a share of their
	// space; LastDonationError says why the last round gave nothing.
	Asking            bool   `json:"asking,omitempty"`
	LastDonationError string `json:"lastDonationError,omitempty"`
}

// NodeStatus is one owner's share of the range.
type NodeStatus struct {
	Name      string         `json:"name"`
	Ranges    []netip.Prefix `json:"ranges"`
	Ranges6   []netip.Prefix `json:"ranges6,omitempty"` // the IPv6 ranges paired with Ranges (dual stack)
	Size      uint64         `json:"size"`              // addresses owned
	Used      uint64         `json:"used"`              // as last published by the node
	Free      uint64         `json:"free"`
	Reachable bool           `json:"reachable"`
	// SilentSince: this peer did not answer this node's last donation
	// request, sent then; it is asked only after the others for a while.
	SilentSince *time.Time `json:"silentSince,omitempty"`
}

// ClaimStatus is a reclaim this node made that is not confirmed yet.
type ClaimStatus struct {
	Dead       string         `json:"dead"`
	Ranges     []netip.Prefix `json:"ranges"`
	WaitingFor []string       `json:"waitingFor"` // live peers that have not echoed the claim yet
}

// Status reports the ring as this node knows it; reachable says whether a
// node is reachable now (nil: only this node is).
func (a *Allocator) Status(reachable func(node string) bool) Status {
	live := a.livePeers()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := Status{
		Self:        a.cfg.Self,
		Range:       a.cfg.CIDR,
		Range6:      a.cfg.PairCIDR,
		Size:        a.ring.Size(),
		Allocations: len(a.allocs),
		Nodes:       []NodeStatus{},
	}
	if a.ring.Seeded() {
		st.Genesis = a.ring.Genesis().String()
	}
	st.Ready, st.Reason = a.readiness(live)
	st.RefusedGenesis = a.refused
	st.Asking = a.seeking
	if a.seekErr != nil {
		st.LastDonationError = a.seekErr.Error()
	}
	size := a.ring.Size()
	cidrs := a.ring.CIDRsByOwner()
	spans := a.ring.SpansByOwner()
	for _, o := range a.ring.Owners() {
		ns := NodeStatus{Name: o, Ranges: cidrs[o], Ranges6: a.PairedPrefixes(cidrs[o])}
		for _, s := range spans[o] {
			ns.Size += s.Len()
		}
		ns.Reachable = o == a.cfg.Self || (reachable != nil && reachable(o))
		if o == a.cfg.Self {
			ns.Free = a.free
			for off := range a.byOff {
				if a.ring.LabelAt(off).Owner == o {
					ns.Used++
				}
			}
		} else {
			f, _ := a.ring.FreeOf(o)
			ns.Free = min(f.Count, ns.Size)
			reserved := uint64(0)
			for _, off := range []uint64{0, size - 1} {
				if a.ring.LabelAt(off).Owner == o {
					reserved++
				}
			}
			if ns.Size > ns.Free+reserved {
				ns.Used = ns.Size - ns.Free - reserved
			}
		}
		if t, ok := a.silent[o]; ok && a.cfg.Now().Sub(t) < silentFor {
			t := t.UTC()
			ns.SilentSince = &t
		}
		if !ns.Reachable {
			st.UnreachableAddresses += ns.Size
		}
		st.Nodes = append(st.Nodes, ns)
	}
	st.UnreachableShare = float64(st.UnreachableAddresses) / float64(size)
	for _, c := range a.claims {
		cs := ClaimStatus{Dead: c.Dead, Ranges: a.ring.SpanCIDRs(c.span()), WaitingFor: []string{}}
		for _, p := range live {
			if !c.acks[p] {
				cs.WaitingFor = append(cs.WaitingFor, p)
			}
		}
		slices.Sort(cs.WaitingFor)
		st.PendingClaims = append(st.PendingClaims, cs)
	}
	return st
}
