package daemon

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// peer is what the daemon knows of one other node: from gossip (key,
// endpoint, tunnel address) and from the address ring (its ranges).
type peer struct {
	Name        string
	PublicKey   wgtypes.Key
	Endpoint    *net.UDPAddr // what it advertises; nil if unknown
	TunnelAddr  netip.Addr   // its address on the overlay; invalid if none yet
	TunnelAddr6 netip.Addr   // its IPv6 address on the overlay (dual stack); invalid if none
	Ranges      []netip.Prefix
	// RelayVia names the peer that carries this peer's traffic when the
	// direct path does not work; empty for a direct path.
	RelayVia string
	// ProbeAddr is where the direct path to the peer is probed; it stays
	// in the peer's own entry while its ranges are relayed. Invalid: none.
	ProbeAddr netip.Addr
	// PSK is the preshared key with the peer, when it differs from the
	// view's (a cluster secret rotation moves peers one by one).
	PSK *wgtypes.Key
}

// meshView is the desired state of the tunnel: every live peer with what it
// should be reachable at. It is plain data, computed without the kernel.
type meshView struct {
	PSK       *wgtypes.Key  // nil: no preshared key (--insecure)
	Keepalive time.Duration // PersistentKeepalive of every peer (0: off)
	Peers     []peer
}

// allowedIPs returns, for every peer, the prefixes its WireGuard peer entry
// carries: its tunnel address and ranges, plus those of every peer relayed
// through it, and its probe address. A relayed peer keeps its entry with
// only its probe address, so probes and handshakes on the direct path go
// on and tell when it works again (the /32 outranks the relay's ranges).
func (v meshView) allowedIPs() map[string][]netip.Prefix {
	byName := make(map[string]peer, len(v.Peers))
	for _, p := range v.Peers {
		byName[p.Name] = p
	}
	out := make(map[string][]netip.Prefix, len(v.Peers))
	for _, p := range v.Peers {
		carrier := p.Name
		if p.RelayVia != "" {
			if _, ok := byName[p.RelayVia]; ok {
				carrier = p.RelayVia
			}
		}
		out[carrier] = append(out[carrier], ownPrefixes(p)...)
		if p.ProbeAddr.IsValid() {
			out[p.Name] = append(out[p.Name], netip.PrefixFrom(p.ProbeAddr, p.ProbeAddr.BitLen()))
		} else if _, ok := out[p.Name]; !ok {
			out[p.Name] = nil
		}
	}
	for name, ps := range out {
		out[name] = normalize(ps)
	}
	return out
}

// checkTunnelAddr says why the tunnel address a peer announces cannot be
// accepted, "" when it can. It must lie in the pod range and in the ranges
// the ring gives that peer (ranges: every owner's, by name): a /32 route
// and allowed IP for an address of another node's range would outrank that
// node's range and take its traffic.
func checkTunnelAddr(name string, addr netip.Addr, podCIDR netip.Prefix, ranges map[string][]netip.Prefix) string {
	if !addr.IsValid() {
		return ""
	}
	if podCIDR.IsValid() && !podCIDR.Contains(addr) {
		return fmt.Sprintf("announces tunnel address %s outside the pod range %s", addr, podCIDR)
	}
	for _, r := range ranges[name] {
		if r.Contains(addr) {
			return ""
		}
	}
	owners := slices.Sorted(maps.Keys(ranges))
	for _, o := range owners {
		for _, r := range ranges[o] {
			if r.Contains(addr) {
				return fmt.Sprintf("announces tunnel address %s, which the address ring gives to %s", addr, o)
			}
		}
	}
	return fmt.Sprintf("announces tunnel address %s, which the address ring gives to no node", addr)
}

func ownPrefixes(p peer) []netip.Prefix {
	ps := slices.Clone(p.Ranges)
	for _, addr := range []netip.Addr{p.TunnelAddr, p.TunnelAddr6} {
		if !addr.IsValid() {
			continue
		}
		covered := false
		for _, r := range p.Ranges {
			if r.Contains(addr) {
				covered = true
				break
			}
		}
		if !covered {
			ps = append(ps, netip.PrefixFrom(addr, addr.BitLen()))
		}
	}
	return ps
}

// normalize sorts prefixes, drops duplicates and prefixes inside others, and
// joins sibling prefixes into their parent, so routes and AllowedIPs stay as
// few CIDRs as possible.
func normalize(ps []netip.Prefix) []netip.Prefix {
	out := dedup(ps)
	for {
		merged := false
		var next []netip.Prefix
		for i := 0; i < len(out); i++ {
			if i+1 < len(out) {
				if parent, ok := siblings(out[i], out[i+1]); ok {
					next = append(next, parent)
					i++
					merged = true
					continue
				}
			}
			next = append(next, out[i])
		}
		out = dedup(next)
		if !merged {
			return out
		}
	}
}

// siblings reports whether a and b are the two halves of one prefix.
func siblings(a, b netip.Prefix) (netip.Prefix, bool) {
	if a.Bits() != b.Bits() || a.Bits() == 0 || a.Addr().BitLen() != b.Addr().BitLen() {
		return netip.Prefix{}, false
	}
	parent, err := a.Addr().Prefix(a.Bits() - 1)
	if err != nil || parent.Addr() != a.Addr() {
		return netip.Prefix{}, false
	}
	if pb, _ := b.Addr().Prefix(b.Bits() - 1); pb != parent || b.Addr() == a.Addr() {
		return netip.Prefix{}, false
	}
	return parent, true
}

func dedup(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	for i := range ps {
		ps[i] = ps[i].Masked()
	}
	sort.Slice(ps, func(i, j int) bool {
		if c := ps[i].Addr().Compare(ps[j].Addr()); c != 0 {
			return c < 0
		}
		return ps[i].Bits() < ps[j].Bits()
	})
	out := ps[:0]
	for _, p := range ps {
		if len(out) > 0 && out[len(out)-1].Contains(p.Addr()) && out[len(out)-1].Bits() <= p.Bits() {
			continue
		}
		out = append(out, p)
	}
	return out
}

// endpointMemory remembers the endpoint the daemon last set for each peer, so
// an endpoint WireGuard learned by roaming (a peer behind NAT) is not
// overwritten on every reconcile, while a changed advertisement still is.
type endpointMemory map[wgtypes.Key]string

// diffPeers computes the minimal WireGuard change from the device's current
// peers to the view: peers that did not change are left out entirely, so
// their sessions are never disturbed.
func diffPeers(current []wgtypes.Peer, v meshView, mem endpointMemory) []wgtypes.PeerConfig {
	have := make(map[wgtypes.Key]wgtypes.Peer, len(current))
	for _, p := range current {
		have[p.PublicKey] = p
	}
	allowed := v.allowedIPs()
	want := make(map[wgtypes.Key]bool, len(v.Peers))
	var out []wgtypes.PeerConfig
	for _, p := range v.Peers {
		if p.PublicKey == (wgtypes.Key{}) {
			continue
		}
		want[p.PublicKey] = true
		cur, exists := have[p.PublicKey]
		pc := wgtypes.PeerConfig{PublicKey: p.PublicKey}
		changed := false

		psk := wgtypes.Key{}
		if p.PSK != nil {
			psk = *p.PSK
		} else if v.PSK != nil {
			psk = *v.PSK
		}
		if !exists || cur.PresharedKey != psk {
			pc.PresharedKey = &psk
			changed = true
		}
		if !exists || cur.PersistentKeepaliveInterval != v.Keepalive {
			ka := v.Keepalive
			pc.PersistentKeepaliveInterval = &ka
			changed = true
		}
		if p.Endpoint != nil {
			adv := p.Endpoint.String()
			if !exists || cur.Endpoint == nil || mem[p.PublicKey] != adv {
				pc.Endpoint = p.Endpoint
				changed = true
			}
		}
		wantIPs := allowed[p.Name]
		if !exists || !samePrefixes(ipNetsToPrefixes(cur.AllowedIPs), wantIPs) {
			pc.ReplaceAllowedIPs = true
			pc.AllowedIPs = prefixesToIPNets(wantIPs)
			changed = true
		}
		if changed {
			out = append(out, pc)
		}
	}
	for _, p := range current {
		if !want[p.PublicKey] {
			out = append(out, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
		}
	}
	return sortByKey(out)
}

// sortByKey sorts peer configs by public key as status shows keys
// (base64), encoding each key once rather than on every comparison.
func sortByKey(cfgs []wgtypes.PeerConfig) []wgtypes.PeerConfig {
	type keyed struct {
		key string
		pc  wgtypes.PeerConfig
	}
	ks := make([]keyed, len(cfgs))
	for i, pc := range cfgs {
		ks[i] = keyed{pc.PublicKey.String(), pc}
	}
	slices.SortStableFunc(ks, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
	for i := range ks {
		cfgs[i] = ks[i].pc
	}
	return cfgs
}

// remember records the endpoints a successful apply of cfgs has set.
func (m endpointMemory) remember(cfgs []wgtypes.PeerConfig) {
	for _, pc := range cfgs {
		switch {
		case pc.Remove:
			delete(m, pc.PublicKey)
		case pc.Endpoint != nil:
			m[pc.PublicKey] = pc.Endpoint.String()
		}
	}
}

func samePrefixes(a, b []netip.Prefix) bool {
	return slices.Equal(normalize(a), normalize(b))
}

func ipNetsToPrefixes(ns []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ns))
	for _, n := range ns {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ones, _ := n.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), ones))
	}
	return out
}

func prefixesToIPNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, net.IPNet{
			IP:   net.IP(p.Addr().AsSlice()),
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
		})
	}
	return out
}

// renderPeerConfigs is the text form of a WireGuard change, for golden tests
// and debug logs. Keys are shortened; the preshared key is never shown.
func renderPeerConfigs(cfgs []wgtypes.PeerConfig, names map[wgtypes.Key]string) string {
	var b strings.Builder
	for _, pc := range cfgs {
		name := names[pc.PublicKey]
		if name == "" {
			name = "?"
		}
		fmt.Fprintf(&b, "peer %s %s", name, pc.PublicKey.String()[:8])
		if pc.Remove {
			b.WriteString(" remove\n")
			continue
		}
		if pc.PresharedKey != nil {
			if *pc.PresharedKey == (wgtypes.Key{}) {
				b.WriteString(" psk=none")
			} else {
				b.WriteString(" psk=set")
			}
		}
		if pc.PersistentKeepaliveInterval != nil {
			fmt.Fprintf(&b, " keepalive=%s", *pc.PersistentKeepaliveInterval)
		}
		if pc.Endpoint != nil {
			fmt.Fprintf(&b, " endpoint=%s", pc.Endpoint)
		}
		if pc.ReplaceAllowedIPs {
			ps := ipNetsToPrefixes(pc.AllowedIPs)
			s := make([]string, len(ps))
			for i, p := range ps {
				s[i] = p.String()
			}
			fmt.Fprintf(&b, " allowed-ips=[%s]", strings.Join(s, " "))
		}
		b.WriteString("\n")
	}
	return b.String()
}
