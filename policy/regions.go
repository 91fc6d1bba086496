package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ruleBox is a box of traffic a rule matches; boxes are given in
// precedence order.
type ruleBox struct {
	box
	rule ClusterRule
}

// piece is a region without its peer range: what one peer interval
// resolves to.
type piece struct {
	protoFrom, protoTo Proto
	ports              PortRange
	action             Action
}

// resolve turns boxes in precedence order into disjoint regions, each with
// the action of the first box that covers it (neighbours with the same
// action merge, whichever rules they come from). It sweeps the peer addresses:
// between two consecutive box edges the same boxes are active, and their
// protocol x port plane is resolved once (and remembered for the same set
// of active boxes); neighbouring intervals that resolve alike are merged.
func resolve(boxes []ruleBox) []Region {
	var out []Region
	for _, bits := range []int{32, 128} {
		var fam []int // indexes into boxes
		for i, b := range boxes {
			if b.peer.From.BitLen() == bits {
				fam = append(fam, i)
			}
		}
		if len(fam) > 0 {
			out = append(out, resolveFamily(boxes, fam)...)
		}
	}
	slices.SortFunc(out, func(a, b Region) int {
		return cmp.Or(a.Peer.From.Compare(b.Peer.From), cmp.Compare(a.ProtoFrom, b.ProtoFrom), cmp.Compare(a.Ports.From, b.Ports.From))
	})
	return out
}

func resolveFamily(boxes []ruleBox, idx []int) []Region {
	type event struct {
		at    netip.Addr
		start bool
		box   int
	}
	var events []event
	for _, i := range idx {
		events = append(events, event{boxes[i].peer.From, true, i})
		if end := boxes[i].peer.To.Next(); end.IsValid() && end.BitLen() == boxes[i].peer.To.BitLen() {
			events = append(events, event{end, false, i})
		}
	}
	slices.SortFunc(events, func(a, b event) int { return a.at.Compare(b.at) })
	famMax := allV4.To
	if boxes[idx[0]].peer.From.Is6() {
		famMax = allV6.To
	}
	var out []Region
	var active []int // sorted: precedence order
	memo := map[string][]piece{}
	var last []piece
	lastOpen := -1 // index in out where the previous interval's regions start
	for k := 0; k < len(events); {
		at := events[k].at
		for ; k < len(events) && events[k].at == at; k++ {
			e := events[k]
			pos, found := slices.BinarySearch(active, e.box)
			switch {
			case e.start && !found:
				active = slices.Insert(active, pos, e.box)
			case !e.start && found:
				active = slices.Delete(active, pos, pos+1)
			}
		}
		to := famMax
		if k < len(events) {
			to = events[k].at.Prev()
		}
		if len(active) == 0 {
			last, lastOpen = nil, -1
			continue
		}
		key := activeKey(active)
		pieces, ok := memo[key]
		if !ok {
			pieces = resolvePlane(boxes, active)
			memo[key] = pieces
		}
		if lastOpen >= 0 && slices.Equal(pieces, last) {
			for i := lastOpen; i < len(out); i++ {
				out[i].Peer.To = to
			}
			continue
		}
		lastOpen, last = len(out), pieces
		for _, p := range pieces {
			out = append(out, Region{Peer: AddrRange{at, to}, ProtoFrom: p.protoFrom, ProtoTo: p.protoTo, Ports: p.ports, Action: p.action})
		}
	}
	return out
}

func activeKey(active []int) string {
	var b strings.Builder
	for _, i := range active {
		b.WriteString(strconv.Itoa(i))
		b.WriteByte(',')
	}
	return b.String()
}

// resolvePlane resolves the protocol x port plane of the active boxes, in
// precedence order: each box keeps what no earlier box covers.
func resolvePlane(boxes []ruleBox, active []int) []piece {
	var covered []box
	var out []piece
	for _, i := range active {
		b := boxes[i].box
		b.peer = AddrRange{} // the interval is the same for all
		pieces := []box{b}
		for _, c := range covered {
			var next []box
			for _, pc := range pieces {
				next = append(next, pc.minus(c)...)
			}
			pieces = next
			if len(pieces) == 0 {
				break
			}
		}
		for _, pc := range pieces {
			covered = append(covered, pc)
			out = append(out, piece{pc.protoFrom, pc.protoTo, pc.ports, boxes[i].rule.Action})
		}
	}
	return mergePieces(out)
}

// mergePieces joins pieces of the same action that touch: adjacent port
// ranges of the same protocols, then adjacent protocols with the same
// ports.
func mergePieces(ps []piece) []piece {
	slices.SortFunc(ps, func(a, b piece) int {
		return cmp.Or(cmp.Compare(a.protoFrom, b.protoFrom), cmp.Compare(a.protoTo, b.protoTo), cmp.Compare(a.ports.From, b.ports.From))
	})
	ps = joinAdjacent(ps, func(a, b piece) bool {
		return a.protoFrom == b.protoFrom && a.protoTo == b.protoTo && a.ports.To < 65535 && a.ports.To+1 == b.ports.From
	}, func(a *piece, b piece) { a.ports.To = b.ports.To })
	slices.SortFunc(ps, func(a, b piece) int {
		return cmp.Or(cmp.Compare(a.ports.From, b.ports.From), cmp.Compare(a.ports.To, b.ports.To), cmp.Compare(a.protoFrom, b.protoFrom))
	})
	ps = joinAdjacent(ps, func(a, b piece) bool {
		return a.ports == b.ports && a.protoTo < 255 && a.protoTo+1 == b.protoFrom
	}, func(a *piece, b piece) { a.protoTo = b.protoTo })
	slices.SortFunc(ps, func(a, b piece) int {
		return cmp.Or(cmp.Compare(a.protoFrom, b.protoFrom), cmp.Compare(a.ports.From, b.ports.From))
	})
	return ps
}

func joinAdjacent(ps []piece, touch func(a, b piece) bool, join func(a *piece, b piece)) []piece {
	var out []piece
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].action == p.action && touch(out[n-1], p) {
			join(&out[n-1], p)
			continue
		}
		out = append(out, p)
	}
	return out
}

// matches reports whether a packet lies in the box.
func (b box) matches(peer netip.Addr, proto Proto, port uint16) bool {
	return b.peer.Contains(peer) && b.protoFrom <= proto && proto <= b.protoTo && (!proto.HasPorts() || b.ports.Contains(port))
}
