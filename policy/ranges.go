package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
)

// prefixRange returns the addresses of a (masked) prefix as a range.
func prefixRange(p netip.Prefix) AddrRange {
	from := p.Masked().Addr()
	b := from.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	to, _ := netip.AddrFromSlice(b)
	return AddrRange{from, to}
}

// subtractRange removes x from every range of rs.
func subtractRange(rs []AddrRange, x AddrRange) []AddrRange {
	var out []AddrRange
	for _, r := range rs {
		if r.From.BitLen() != x.From.BitLen() || x.To.Less(r.From) || r.To.Less(x.From) {
			out = append(out, r)
			continue
		}
		if r.From.Less(x.From) {
			out = append(out, AddrRange{r.From, x.From.Prev()})
		}
		if x.To.Less(r.To) {
			out = append(out, AddrRange{x.To.Next(), r.To})
		}
	}
	return out
}

// coalesce returns the union of rs as sorted, disjoint, non-adjacent ranges.
func coalesce(rs []AddrRange) []AddrRange {
	if len(rs) < 2 {
		return rs
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b AddrRange) int { return cmp.Or(a.From.Compare(b.From), a.To.Compare(b.To)) })
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if r.From.BitLen() == last.From.BitLen() && (r.From.Compare(last.To) <= 0 || last.To.Next() == r.From) {
			if last.To.Less(r.To) {
				last.To = r.To
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// addrFamilies returns the address families (32, 128) of addrs, as a key.
func addrFamilies(addrs []netip.Addr) []int {
	var out []int
	for _, a := range addrs {
		if !slices.Contains(out, a.BitLen()) {
			out = append(out, a.BitLen())
		}
	}
	slices.Sort(out)
	return out
}

func compareEntry(a, b Entry) int {
	return cmp.Or(
		a.Peer.From.Compare(b.Peer.From),
		a.Peer.To.Compare(b.Peer.To),
		cmp.Compare(a.Proto, b.Proto),
		cmp.Compare(a.Ports.From, b.Ports.From),
		cmp.Compare(a.Ports.To, b.Ports.To),
	)
}

func dedupGrants(gs []Grant) []Grant {
	slices.SortFunc(gs, func(a, b Grant) int {
		return cmp.Or(strings.Compare(a.Policy, b.Policy), compareEntry(a.Entry, b.Entry))
	})
	return slices.Compact(gs)
}

// protoPorts is one protocol with a port range; {ProtoAny, AllPorts} stands
// for everything.
type protoPorts struct {
	proto Proto
	ports PortRange
}

func compareProtoPorts(a, b protoPorts) int {
	return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.ports.From, b.ports.From), cmp.Compare(a.ports.To, b.ports.To))
}

// mergeGrants returns the union of the grants as disjoint entries, sorted,
// keeping only the address families of the pod's own addresses: a packet
// never crosses families. Adjacent address segments with the same protocols
// and ports are merged, and so are overlapping or adjacent port ranges.
func mergeGrants(gs []Grant, podIPs []netip.Addr) []Entry {
	var out []Entry
	for _, fam := range []AddrRange{allV4, allV6} {
		if !slices.ContainsFunc(podIPs, func(a netip.Addr) bool { return a.BitLen() == fam.From.BitLen() }) {
			continue
		}
		out = append(out, sweep(gs, fam)...)
	}
	return out
}

type sweepEvent struct {
	at  netip.Addr
	add bool
	key protoPorts
}

// sweep merges the grants of one address family (fam is its whole range) by
// walking the address axis: at every boundary it recomputes the protocols and
// ports allowed for the segment up to the next boundary.
func sweep(gs []Grant, fam AddrRange) []Entry {
	var evs []sweepEvent
	for _, g := range gs {
		if g.Peer.From.BitLen() != fam.From.BitLen() || g.Ports.From > g.Ports.To {
			continue
		}
		k := protoPorts{g.Proto, g.Ports}
		if g.Proto == ProtoAny {
			k.ports = AllPorts
		}
		evs = append(evs, sweepEvent{g.Peer.From, true, k})
		if g.Peer.To != fam.To {
			evs = append(evs, sweepEvent{g.Peer.To.Next(), false, k})
		}
	}
	slices.SortFunc(evs, func(a, b sweepEvent) int { return a.at.Compare(b.at) })

	var out []Entry
	active := map[protoPorts]int{}
	var cur []protoPorts // signature of the open run
	var curFrom, curTo netip.Addr
	flush := func() {
		for _, k := range cur {
			out = append(out, Entry{Peer: AddrRange{curFrom, curTo}, Proto: k.proto, Ports: k.ports})
		}
		cur = nil
	}
	for i := 0; i < len(evs); {
		at := evs[i].at
		for ; i < len(evs) && evs[i].at == at; i++ {
			if evs[i].add {
				active[evs[i].key]++
			} else if active[evs[i].key]--; active[evs[i].key] == 0 {
				delete(active, evs[i].key)
			}
		}
		segTo := fam.To
		if i < len(evs) {
			segTo = evs[i].at.Prev()
		}
		sig := signature(active)
		switch {
		case len(sig) == 0:
			flush()
		case cur != nil && slices.Equal(sig, cur) && curTo.Next() == at:
			curTo = segTo
		default:
			flush()
			cur, curFrom, curTo = sig, at, segTo
		}
	}
	flush()
	slices.SortFunc(out, compareEntry)
	return out
}

// signature returns the disjoint protocols and port ranges of the active
// grants, sorted.
func signature(active map[protoPorts]int) []protoPorts {
	if active[protoPorts{ProtoAny, AllPorts}] > 0 {
		return []protoPorts{{ProtoAny, AllPorts}}
	}
	keys := make([]protoPorts, 0, len(active))
	for k := range active {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareProtoPorts)
	var out []protoPorts
	for _, k := range keys {
		if n := len(out); n > 0 && out[n-1].proto == k.proto && uint32(k.ports.From) <= uint32(out[n-1].ports.To)+1 {
			out[n-1].ports.To = max(out[n-1].ports.To, k.ports.To)
			continue
		}
		out = append(out, k)
	}
	return out
}
