package daemon

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// TCP MSS clamping per destination. The tunnel device keeps the largest
// MTU (pods too), so paths that carry it lose nothing; for a peer whose
// path MTU is smaller, every TCP SYN and SYN-ACK to or from its ranges has
// its MSS option lowered to that path MTU minus the IP and TCP headers (40
// bytes for IPv4, 60 for IPv6), so neither end ever sends a segment the
// path drops. The path MTU is the room inside the tunnel, the same for
// both families, so a dual-stack peer's IPv6 ranges are clamped too. Both
// directions are clamped on each node, so one node's measurement protects
// a connection even before the other node has its own.
//
// The clamp covers TCP only. Routes keep the tunnel's MTU: the routes of
// all peers are merged into as few prefixes as possible, and a per-peer
// route MTU would split them; UDP over such a path must fit on its own (as
// QUIC does by its own path MTU probing).

// ipTCPHeaders and ip6TCPHeaders are what an IPv4 and an IPv6 packet of
// a TCP segment carry besides the segment's payload (no options).
const (
	ipTCPHeaders  = 40
	ip6TCPHeaders = 60
)

// tcpHeaders is ipTCPHeaders or ip6TCPHeaders, by the family of pre.
func tcpHeaders(pre netip.Prefix) int {
	if pre.Addr().Is4() {
		return ipTCPHeaders
	}
	return ip6TCPHeaders
}

// clampRule lowers the MSS of TCP SYNs to (Dir "to") or from (Dir "from")
// Prefix, a range of Peer, to MSS.
type clampRule struct {
	Dir    string
	Prefix netip.Prefix
	MSS    int
	Peer   string
}

// clampRules are the rules for the peers whose path MTU (results, by name)
// is known and smaller than the tunnel's MTU.
func clampRules(peers []peer, results map[string]int, tunnelMTU int) []clampRule {
	var out []clampRule
	for _, p := range peers {
		mtu := results[p.Name]
		if mtu <= ip6TCPHeaders || mtu >= tunnelMTU {
			continue
		}
		for _, pre := range normalize(ownPrefixes(p)) {
			for _, dir := range []string{"to", "from"} {
				out = append(out, clampRule{Dir: dir, Prefix: pre, MSS: mtu - tcpHeaders(pre), Peer: p.Name})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Dir != b.Dir {
			return a.Dir > b.Dir // "to" first
		}
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c < 0
		}
		return a.Prefix.Bits() < b.Prefix.Bits()
	})
	return out
}

// String is the rule as nft would list it, with the peer as comment; it is
// also the rule's tag in the kernel.
func (r clampRule) String() string {
	addr := "daddr"
	if r.Dir == "from" {
		addr = "saddr"
	}
	family := "ip"
	if !r.Prefix.Addr().Is4() {
		family = "ip6"
	}
	return fmt.Sprintf("%s %s %s tcp flags syn tcp option maxseg size > %d tcp option maxseg size set %d # peer %s",
		family, addr, r.Prefix, r.MSS, r.MSS, r.Peer)
}

func renderClampRules(rs []clampRule) string {
	var b strings.Builder
	for _, r := range rs {
		chain := nftClampOutChain
		if r.Dir == "from" {
			chain = nftClampInChain
		}
		fmt.Fprintf(&b, "%s: %s\n", chain, r)
	}
	return b.String()
}

// The chains of the clamp in weft's table: what leaves for a peer is
// clamped in postrouting, what comes from one in prerouting, so forwarded
// pod traffic and the node's own are both covered.
const (
	nftClampOutChain = "mss-clamp-out"
	nftClampInChain  = "mss-clamp-in"
)
