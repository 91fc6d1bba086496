package netlab

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The lab's own nftables tables: "weftlab" in the bridge family of the
// underlay (cuts between ports) and in the ip family of the router (NAT,
// cuts across sites). Every rule carries a tag in its user data, so healing
// removes exactly what cutting added.
const nftTable = "weftlab"

// withNft runs f with an nftables connection inside the netns at path and
// flushes what f queued.
func withNft(path string, f func(c *nftables.Conn) error) error {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return fmt.Errorf("nftables in %s: %w", path, err)
	}
	if err := f(c); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables in %s: %w", path, err)
	}
	return nil
}

var accept = nftables.ChainPolicyAccept

// bridgeChain is the forward chain of the underlay's bridges.
func bridgeChain(c *nftables.Conn) *nftables.Chain {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyBridge, Name: nftTable})
	return c.AddChain(&nftables.Chain{
		Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
}

// routerChains are the router's chains. Cuts live in a chain of their own
// that runs before the NAT filters, so an accept there never undoes a cut.
type routerChains struct {
	cut, forward, input, prerouting, postrouting *nftables.Chain
}

func routerTable(c *nftables.Conn) routerChains {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: nftTable})
	add := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		ch := &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio}
		if typ == nftables.ChainTypeFilter {
			ch.Policy = &accept
		}
		return c.AddChain(ch)
	}
	return routerChains{
		cut:         add("cut", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityRef(-10)),
		forward:     add("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter),
		input:       add("input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter),
		prerouting:  add("prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		postrouting: add("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource),
	}
}

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func matchIface(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
	}
}

// matchIPv4 matches the source (src) or destination address against p.
func matchIPv4(src bool, p netip.Prefix) []expr.Any {
	off := uint32(16)
	if src {
		off = 12
	}
	e := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}}
	if p.Bits() < 32 {
		m := make([]byte, 4)
		for i := 0; i < p.Bits(); i++ {
			m[i/8] |= 0x80 >> (i % 8)
		}
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: make([]byte, 4)})
	}
	a := p.Masked().Addr().As4()
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]})
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func rule(t *nftables.Chain, tag string, parts ...[]expr.Any) *nftables.Rule {
	r := &nftables.Rule{Table: t.Table, Chain: t, UserData: []byte(tag)}
	for _, p := range parts {
		r.Exprs = append(r.Exprs, p...)
	}
	return r
}

func one(e expr.Any) []expr.Any { return []expr.Any{e} }

// natSite makes the router a NAT gateway for site s: what leaves the site
// is masqueraded, and nothing from outside gets in but answers.
func natSite(router string, s int) error {
	leg := fmt.Sprintf("s%d", s)
	cidr := sitePrefix(s)
	tag := fmt.Sprintf("nat site %d", s)
	return withNft(router, func(c *nftables.Conn) error {
		rc := routerTable(c)
		fwd, in, post := rc.forward, rc.input, rc.postrouting
		c.AddRule(rule(post, tag, matchIPv4(true, cidr), matchIface(expr.MetaKeyOIFNAME, expr.CmpOpNeq, leg), one(&expr.Masq{})))
		c.AddRule(rule(fwd, tag, matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, leg), ctEstablished(), one(verdict(expr.VerdictAccept))))
		c.AddRule(rule(fwd, tag, matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, leg), one(verdict(expr.VerdictDrop))))
		c.AddRule(rule(in, tag, matchIface(expr.MetaKeyIIFNAME, expr.CmpOpNeq, leg), matchIPv4(false, cidr), one(verdict(expr.VerdictDrop))))
		return nil
	})
}

// deleteTagged deletes the rules tagged tag from the lab's table of family
// in the netns at path.
func deleteTagged(path string, family nftables.TableFamily, tag string) error {
	return withNft(path, func(c *nftables.Conn) error {
		t := &nftables.Table{Family: family, Name: nftTable}
		chains, err := c.ListChainsOfTableFamily(family)
		if err != nil {
			return fmt.Errorf("list chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name != nftTable {
				continue
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return fmt.Errorf("list rules of %s: %w", ch.Name, err)
			}
			for _, r := range rules {
				if bytes.Equal(r.UserData, []byte(tag)) {
					if err := c.DelRule(r); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
}

func pairTag(a, b *Node) string {
	names := []string{a.Name, b.Name}
	slices.Sort(names)
	return "cut " + names[0] + " " + names[1]
}

// Cut drops all traffic between a and b, both ways: on the bridge between
// their ports when they share a site, in the router when they do not.
// Cutting twice adds nothing.
func (l *Lab) Cut(a, b *Node) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a == b {
		return fmt.Errorf("cut %s from itself", a.Name)
	}
	tag := pairTag(a, b)
	if err := l.healLocked(a, b); err != nil {
		return err
	}
	where, family, err := l.pathPlace(a, b)
	if err != nil {
		return fmt.Errorf("cut %s from %s: %w", a.Name, b.Name, err)
	}
	if family == nftables.TableFamilyBridge {
		err = withNft(where, func(c *nftables.Conn) error {
			ch := bridgeChain(c)
			for _, p := range [][2]*Node{{a, b}, {b, a}} {
				c.InsertRule(rule(ch, tag,
					matchIface(expr.MetaKeyIIFNAME, expr.CmpOpEq, p[0].port),
					matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, p[1].port),
					one(verdict(expr.VerdictDrop))))
			}
			return nil
		})
	} else {
		err = withNft(where, func(c *nftables.Conn) error {
			cut := routerTable(c).cut
			for _, p := range [][2]*Node{{a, b}, {b, a}} {
				c.InsertRule(rule(cut, tag,
					matchIPv4(true, netip.PrefixFrom(p[0].Addr, 32)),
					matchIPv4(false, netip.PrefixFrom(p[1].Addr, 32)),
					one(verdict(expr.VerdictDrop))))
			}
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("cut %s from %s: %w", a.Name, b.Name, err)
	}
	l.log.Info("cut", "a", a.Name, "b", b.Name)
	return nil
}

// Heal removes exactly the rules Cut(a, b) added.
func (l *Lab) Heal(a, b *Node) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.healLocked(a, b); err != nil {
		return fmt.Errorf("heal %s and %s: %w", a.Name, b.Name, err)
	}
	l.log.Info("healed", "a", a.Name, "b", b.Name)
	return nil
}

func (l *Lab) healLocked(a, b *Node) error {
	where, family, err := l.pathPlace(a, b)
	if err != nil {
		return err
	}
	return deleteTagged(where, family, pairTag(a, b))
}

// pathPlace is where rules on the path between a and b go: the bridge of
// the underlay when they share a site; else the router between them, which
// sees both nodes' own addresses: the own router of a site behind its own
// NAT router (AddNATSite) when the other node is not behind NAT, or the
// shared router. Callers hold l.mu.
func (l *Lab) pathPlace(a, b *Node) (string, nftables.TableFamily, error) {
	if a.Site == b.Site {
		return l.Underlay, nftables.TableFamilyBridge, nil
	}
	sa, sb := l.sites[a.Site], l.sites[b.Site]
	if sa.router != "" || sb.router != "" {
		own, other := sa, sb
		if own.router == "" {
			own, other = sb, sa
		}
		if other.nat {
			return "", 0, fmt.Errorf("%s and %s are both behind NAT and one router sees only the other's public address: cut or limit their paths on a public node's side", a.Name, b.Name)
		}
		return own.router, nftables.TableFamilyIPv4, nil
	}
	return l.router, nftables.TableFamilyIPv4, nil
}

// CutGroups cuts every node of a from every node of b (a partition).
func (l *Lab) CutGroups(a, b []*Node) error {
	for _, x := range a {
		for _, y := range b {
			if err := l.Cut(x, y); err != nil {
				return err
			}
		}
	}
	return nil
}

// HealGroups undoes CutGroups(a, b).
func (l *Lab) HealGroups(a, b []*Node) error {
	for _, x := range a {
		for _, y := range b {
			if err := l.Heal(x, y); err != nil {
				return err
			}
		}
	}
	return nil
}

// Isolate drops everything to and from n at its bridge port, as if its
// cable were pulled; Rejoin plugs it back.
func (l *Lab) Isolate(n *Node) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	tag := "isolate " + n.Name
	if err := deleteTagged(l.Underlay, nftables.TableFamilyBridge, tag); err != nil {
		return fmt.Errorf("isolate %s: %w", n.Name, err)
	}
	err := withNft(l.Underlay, func(c *nftables.Conn) error {
		ch := bridgeChain(c)
		c.InsertRule(rule(ch, tag, matchIface(expr.MetaKeyIIFNAME, expr.CmpOpEq, n.port), one(verdict(expr.VerdictDrop))))
		c.InsertRule(rule(ch, tag, matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, n.port), one(verdict(expr.VerdictDrop))))
		return nil
	})
	if err != nil {
		return fmt.Errorf("isolate %s: %w", n.Name, err)
	}
	l.log.Info("isolated", "node", n.Name)
	return nil
}

// Rejoin undoes Isolate(n).
func (l *Lab) Rejoin(n *Node) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := deleteTagged(l.Underlay, nftables.TableFamilyBridge, "isolate "+n.Name); err != nil {
		return fmt.Errorf("rejoin %s: %w", n.Name, err)
	}
	l.log.Info("rejoined", "node", n.Name)
	return nil
}

// PortForward makes the router of n's NAT'ed site forward proto ("tcp" or
// "udp") port on its outside addresses to the same port of n, like a port
// forward on a home router. It returns that address as nodes of site 0 see
// it (172.30.0.254:port; from site S it is 172.30.S.254:port), what n would
// give as --advertise-endpoint.
func (l *Lab) PortForward(n *Node, proto string, port uint16) (netip.AddrPort, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n.Site >= len(l.sites) || !l.sites[n.Site].nat {
		return netip.AddrPort{}, fmt.Errorf("port forward to %s: its site %d is not behind NAT", n.Name, n.Site)
	}
	var l4 byte
	switch proto {
	case "tcp":
		l4 = unix.IPPROTO_TCP
	case "udp":
		l4 = unix.IPPROTO_UDP
	default:
		return netip.AddrPort{}, fmt.Errorf("port forward: protocol %q, want tcp or udp", proto)
	}
	leg := fmt.Sprintf("s%d", n.Site)
	tag := fmt.Sprintf("forward %s %d to %s", proto, port, n.Name)
	portb := binaryutil.BigEndian.PutUint16(port)
	addr := n.Addr.As4()
	matchPort := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: portb},
	}
	if err := deleteTagged(l.router, nftables.TableFamilyIPv4, tag); err != nil {
		return netip.AddrPort{}, err
	}
	err := withNft(l.router, func(c *nftables.Conn) error {
		rc := routerTable(c)
		// To one of the router's own addresses, from outside the site.
		toRouter := []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		}
		c.AddRule(rule(rc.prerouting, tag,
			matchIface(expr.MetaKeyIIFNAME, expr.CmpOpNeq, leg), toRouter, matchPort,
			[]expr.Any{
				&expr.Immediate{Register: 1, Data: addr[:]},
				&expr.Immediate{Register: 2, Data: portb},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			}))
		c.InsertRule(rule(rc.forward, tag,
			matchIface(expr.MetaKeyOIFNAME, expr.CmpOpEq, leg),
			matchIPv4(false, netip.PrefixFrom(n.Addr, 32)), matchPort,
			one(verdict(expr.VerdictAccept))))
		return nil
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port forward %s %d to %s: %w", proto, port, n.Name, err)
	}
	l.log.Info("port forward", "node", n.Name, "proto", proto, "port", port)
	return netip.AddrPortFrom(siteRouter(0), port), nil
}
