package netlab

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Knobs that make the underlay worse than a clean LAN: a smaller MTU on a
// node's link, a path that silently drops packets over a size, random loss.
//
// Delay (tc netem) is not offered: the kernels we test on lack sch_netem,
// and nothing else delays packets cheaply (an EDT delay through a BPF
// program needs sch_fq as well).
//
// How a smaller path MTU shows depends on who learns of it. WireGuard's
// UDP socket (wireguard-go as the kernel module) leaves the kernel's
// default, IP_PMTUDISC_WANT: packets go out with Don't Fragment set, and
// once an ICMP "fragmentation needed" comes back the kernel fragments the
// outer packets to that size, which hides the limit. A link behind a VPN
// or a tunnel whose ICMP is filtered sends nothing back: packets over the
// limit just vanish, the classic PMTU black hole. LimitPath models that
// one: an nftables rule on the path drops every IPv4 packet longer than the
// limit and answers nothing.

// SetLinkMTU sets the MTU of n's underlay link, both ends: eth0 in the node
// and its port on the site bridge. Frames longer than that sent to n by the
// others are dropped by the bridge without a word, as a switch port of a
// smaller MTU drops them; what n sends is limited by its own interface (a
// daemon started afterwards picks its automatic MTU from it).
func (l *Lab) SetLinkMTU(n *Node, mtu int) error {
	if mtu < 68 || mtu > 65535 {
		return fmt.Errorf("MTU of %s's link: %d, want 68..65535", n.Name, mtu)
	}
	set := func(path, name string) error {
		return withHandle(path, func(h *netlink.Handle) error {
			link, err := h.LinkByName(name)
			if err != nil {
				return err
			}
			return h.LinkSetMTU(link, mtu)
		})
	}
	if err := set(n.Netns, "eth0"); err != nil {
		return fmt.Errorf("MTU of %s's eth0: %w", n.Name, err)
	}
	if err := set(l.Underlay, n.port); err != nil {
		return fmt.Errorf("MTU of %s's bridge port %s: %w", n.Name, n.port, err)
	}
	l.log.Info("link MTU set", "node", n.Name, "mtu", mtu)
	return nil
}

// LimitPath makes the path between a and b drop, both ways and silently,
// every IPv4 packet longer than maxPacket bytes (the IP total length), as a
// path through a VPN with a 1280-byte MTU and filtered ICMP does; the rest
// of the paths of a and b keep their full size. The rule sits on the bridge
// between their ports when they share a site, in the router when they do
// not. maxPacket 0 lifts the limit; limiting again replaces it.
func (l *Lab) LimitPath(a, b *Node, maxPacket int) error {
	if a == b {
		return fmt.Errorf("limit the path from %s to itself", a.Name)
	}
	if maxPacket < 0 || maxPacket > 65535 {
		return fmt.Errorf("limit the path %s-%s: %d bytes, want 0 (no limit) or up to 65535", a.Name, b.Name, maxPacket)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	tag := "limit " + pairTag(a, b)
	where, family, err := l.pathPlace(a, b)
	if err != nil {
		return fmt.Errorf("limit the path %s-%s: %w", a.Name, b.Name, err)
	}
	if err := deleteTagged(where, family, tag); err != nil {
		return fmt.Errorf("limit the path %s-%s: %w", a.Name, b.Name, err)
	}
	if maxPacket == 0 {
		l.log.Info("path limit lifted", "a", a.Name, "b", b.Name)
		return nil
	}
	// The kernel hands GSO super-packets (one skb of many segments, its IP
	// length the sum) from a node's eth0 across the bridge; no wire ever
	// carries one. So that the rule sees packets as a wire would, a and b
	// segment before their link (gso_max_segs 1): GSO stays off there,
	// lifting the limit does not turn it back on.
	for _, n := range []*Node{a, b} {
		err := withHandle(n.Netns, func(h *netlink.Handle) error {
			link, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			return h.LinkSetGSOMaxSegs(link, 1)
		})
		if err != nil {
			return fmt.Errorf("turn GSO off on %s's eth0: %w", n.Name, err)
		}
	}
	longer := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 2, Len: 2}, // ip length
		&expr.Cmp{Op: expr.CmpOpGt, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(maxPacket))},
	}
	err = withNft(where, func(c *nftables.Conn) error {
		if family == nftables.TableFamilyBridge {
			ch := bridgeChain(c)
			isIPv4 := []expr.Any{
				&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)},
			}
			for _, p := range [][2]*Node{{a, b}, {b, a}} {
				c.InsertRule(rule(ch, tag,
					matchIface(expr.MetaKeyIIFNAME, expr.CmpOpEq, p[0].port),
					matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, p[1].port),
					isIPv4, longer, one(verdict(expr.VerdictDrop))))
			}
			return nil
		}
		cut := routerTable(c).cut
		for _, p := range [][2]*Node{{a, b}, {b, a}} {
			c.InsertRule(rule(cut, tag,
				matchIPv4(true, netip.PrefixFrom(p[0].Addr, 32)), matchIPv4(false, netip.PrefixFrom(p[1].Addr, 32)),
				longer, one(verdict(expr.VerdictDrop))))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("limit the path %s-%s to %d bytes: %w", a.Name, b.Name, maxPacket, err)
	}
	l.log.Info("path limited", "a", a.Name, "b", b.Name, "max-packet", maxPacket)
	return nil
}

// SetLoss makes n's underlay link drop percent of the IPv4 packets, chosen
// at random, in each direction (nftables numgen on its bridge port): a
// lossy link. ARP passes, so neighbour discovery does not stall for seconds
// and the loss a test sees is the percentage it asked for. 0 makes the link
// clean again; setting again replaces it.
func (l *Lab) SetLoss(n *Node, percent int) error {
	if percent < 0 || percent > 100 {
		return fmt.Errorf("loss on %s's link: %d%%, want 0..100", n.Name, percent)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	tag := "loss " + n.Name
	if err := deleteTagged(l.Underlay, nftables.TableFamilyBridge, tag); err != nil {
		return fmt.Errorf("loss on %s's link: %w", n.Name, err)
	}
	if percent == 0 {
		l.log.Info("loss lifted", "node", n.Name)
		return nil
	}
	// numgen yields a number in host order; it is turned to network order
	// so that the comparison, which compares bytes, compares numbers.
	random := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)},
		&expr.Numgen{Register: 1, Modulus: 100, Type: unix.NFT_NG_RANDOM},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Cmp{Op: expr.CmpOpLt, Register: 1, Data: binaryutil.BigEndian.PutUint32(uint32(percent))},
	}
	err := withNft(l.Underlay, func(c *nftables.Conn) error {
		ch := bridgeChain(c)
		for _, key := range []expr.MetaKey{expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME} {
			c.InsertRule(rule(ch, tag, matchIface(key, expr.CmpOpEq, n.port), random, one(verdict(expr.VerdictDrop))))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("loss on %s's link: %w", n.Name, err)
	}
	l.log.Info("loss set", "node", n.Name, "percent", percent)
	return nil
}
