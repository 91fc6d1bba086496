package netlab

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NATConfig describes the NAT router of a site added with AddNATSite.
type NATConfig struct {
	// Symmetric gives every new flow a random public port (masquerade
	// fully-random), so each peer sees another port and punching fails.
	// Otherwise the NAT is a port-restricted cone: each node's WireGuard
	// port (6784) has one public port, 10000 + its host number, whoever it
	// talks to (endpoint-independent mapping), and an outside packet gets
	// in only as the answer to one sent to its sender (conntrack).
	Symmetric bool
}

// ConeBasePort plus a node's host number on its site is the public port of
// its WireGuard port behind a cone NAT of AddNATSite.
const ConeBasePort = 10000

// AddNATSite adds a site behind a NAT router of its own, like a home or
// office network: the router namespace (PREFIX-rS) has one leg on site 0
// with the site's public address (172.30.0.(254-S), see PublicAddr) and
// one on the site's bridge (172.30.S.254, the nodes' default gateway). What
// leaves the site is translated to the public address; nothing from outside
// gets in but answers, and there is no port forward: two such sites reach
// each other only by punching. Other sites are reached through the shared
// router (172.30.0.254), when there is one.
//
//	site 0 ──┬── node1, node2
//	         ├── rt1 (172.30.0.253) ── br1 172.30.1.0/24 ── node3
//	         └── rt2 (172.30.0.252) ── br2 172.30.2.0/24 ── node4
func (l *Lab) AddNATSite(cfg NATConfig) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, errors.New("lab is closed")
	}
	index := len(l.sites)
	if index > 100 {
		return 0, errors.New("too many NAT sites")
	}
	public := netip.AddrFrom4([4]byte{172, 30, 0, byte(254 - index)})
	if l.sites[0].next >= public.As4()[3] {
		return 0, fmt.Errorf("site 0 holds %s already: add NAT sites before that many nodes", public)
	}
	s := &site{index: index, nat: true, bridge: fmt.Sprintf("br%d", index), public: public, natCfg: cfg}
	err := withHandle(l.Underlay, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.bridge}}
		if err := h.LinkAdd(br); err != nil {
			return err
		}
		return h.LinkSetUp(br)
	})
	if err != nil {
		return 0, fmt.Errorf("create bridge of site %d: %w", index, err)
	}
	l.sites = append(l.sites, s)
	rt, err := l.newNetns(fmt.Sprintf("rt%d", index))
	if err != nil {
		return 0, err
	}
	s.router = rt
	if err := sysctls(rt, map[string]string{"net/ipv4/ip_forward": "1"}); err != nil {
		return 0, err
	}
	if err := l.veth(fmt.Sprintf("w%d", index), l.sites[0].bridge, rt, "wan", netip.PrefixFrom(public, 24)); err != nil {
		return 0, fmt.Errorf("public leg of site %d: %w", index, err)
	}
	if err := l.veth(fmt.Sprintf("r%d", index), s.bridge, rt, "lan", netip.PrefixFrom(siteRouter(index), 24)); err != nil {
		return 0, fmt.Errorf("site leg of site %d: %w", index, err)
	}
	err = withHandle(rt, func(h *netlink.Handle) error {
		wan, err := h.LinkByName("wan")
		if err != nil {
			return err
		}
		return h.RouteReplace(&netlink.Route{LinkIndex: wan.Attrs().Index, Gw: siteRouter(0).AsSlice()})
	})
	if err != nil {
		return 0, fmt.Errorf("default route of the router of site %d: %w", index, err)
	}
	if err := natRouter(rt, cfg); err != nil {
		return 0, fmt.Errorf("NAT of site %d: %w", index, err)
	}
	kind := "cone"
	if cfg.Symmetric {
		kind = "symmetric"
	}
	l.log.Info("NAT site added", "site", index, "nat", kind, "public", public, "cidr", sitePrefix(index))
	return index, nil
}

// PublicAddr is the public address of a site behind a NAT router of its
// own (AddNATSite); the zero Addr for other sites.
func (l *Lab) PublicAddr(site int) netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	if site < 0 || site >= len(l.sites) {
		return netip.Addr{}
	}
	return l.sites[site].public
}

// SiteRouter is the netns path of the router a site sits behind: its own
// (AddNATSite), else the shared one ("" for site 0 or without one).
func (l *Lab) SiteRouter(site int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if site <= 0 || site >= len(l.sites) {
		return ""
	}
	if r := l.sites[site].router; r != "" {
		return r
	}
	return l.router
}

// isPublicAddr reports whether a is the public address of a NAT router.
// Callers hold l.mu.
func (l *Lab) isPublicAddr(a netip.Addr) bool {
	for _, s := range l.sites {
		if s.public == a {
			return true
		}
	}
	return false
}

// natRouter sets up the rules of a site's own NAT router: translate what
// leaves by the public leg, let in only answers, forward into the site only
// answers. Unsolicited packets are dropped before conntrack confirms them,
// so a punch that arrives early leaves no entry that would spoil the
// mapping of the answer (as a NAT gateway's firewall does).
func natRouter(rt string, cfg NATConfig) error {
	tag := "nat router"
	return withNft(rt, func(c *nftables.Conn) error {
		rc := routerTable(c)
		masq := &expr.Masq{}
		if cfg.Symmetric {
			masq = &expr.Masq{FullyRandom: true}
		}
		c.AddRule(rule(rc.postrouting, tag, matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, "wan"), one(masq)))
		c.AddRule(rule(rc.forward, tag, matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, "lan"), ctEstablished(), one(verdict(expr.VerdictAccept))))
		c.AddRule(rule(rc.forward, tag, matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, "lan"), one(verdict(expr.VerdictDrop))))
		c.AddRule(rule(rc.input, tag, matchIface(expr.MetaKeyIIFNAME, expr.CmpOpEq, "wan"), ctEstablished(), one(verdict(expr.VerdictAccept))))
		c.AddRule(rule(rc.input, tag, matchIface(expr.MetaKeyIIFNAME, expr.CmpOpEq, "wan"), one(verdict(expr.VerdictDrop))))
		return nil
	})
}

// coneMapping gives n's WireGuard port its fixed public port on the cone
// NAT of its site: ConeBasePort + host. The rule goes before the site's
// masquerade.
func coneMapping(s *site, n *Node, host byte) error {
	port := binaryutil.BigEndian.PutUint16(uint16(ConeBasePort + int(host)))
	pub := s.public.As4()
	wg := binaryutil.BigEndian.PutUint16(WGPort)
	return withNft(s.router, func(c *nftables.Conn) error {
		rc := routerTable(c)
		c.InsertRule(rule(rc.postrouting, "cone "+n.Name,
			matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, "wan"),
			matchIPv4(true, netip.PrefixFrom(n.Addr, 32)),
			[]expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: wg},
				&expr.Immediate{Register: 1, Data: pub[:]},
				&expr.Immediate{Register: 2, Data: port},
				&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			}))
		return nil
	})
}
