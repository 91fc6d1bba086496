package daemon

import (
	"bytes"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The nftables table weft owns. Each part of weft keeps its own chains in it
// and rewrites only those.
const (
	nftTable     = "weft"
	nftMasqChain = "masquerade"
)

// masqRules is the rule set that masquerades pod egress leaving the pod
// range: traffic from a pod to another pod or to a node's tunnel address is
// never NAT'ed; traffic to anything outside the pod range takes the node's
// address. podCIDR is an IPv4 or an IPv6 range (a dual-stack node has one
// rule of each).
func masqRules(t *nftables.Table, c *nftables.Chain, podCIDR netip.Prefix) []*nftables.Rule {
	net := podCIDR.Masked().Addr().AsSlice()
	n := uint32(len(net))
	mask := maskBytesN(podCIDR.Bits(), len(net))
	// Where the source and destination addresses sit in the header.
	proto, src, dst := byte(unix.NFPROTO_IPV4), uint32(12), uint32(16)
	if n == 16 {
		proto, src, dst = unix.NFPROTO_IPV6, 8, 24
	}
	loadMasked := func(offset uint32) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)},
		}
	}
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	exprs = append(exprs, loadMasked(src)...) // saddr
	exprs = append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net})
	exprs = append(exprs, loadMasked(dst)...) // daddr
	exprs = append(exprs, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: net})
	exprs = append(exprs, &expr.Counter{}, &expr.Masq{})
	return []*nftables.Rule{{
		Table:    t,
		Chain:    c,
		Exprs:    exprs,
		UserData: masqTag(podCIDR),
	}}
}

func masqTag(podCIDR netip.Prefix) []byte {
	return []byte("weft:masquerade:" + podCIDR.Masked().String())
}

func maskBytes(bits int) []byte { return maskBytesN(bits, 4) }

// maskBytesN is the netmask of bits ones in size bytes.
func maskBytesN(bits, size int) []byte {
	m := make([]byte, size)
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

func weftTable() *nftables.Table {
	return &nftables.Table{Name: nftTable, Family: nftables.TableFamilyINet}
}

// syncMasquerade makes the masquerade chain hold exactly weft's rules for
// the pod ranges (one per family). When it already does, nothing is
// written; otherwise the chain is rewritten in one atomic batch.
func syncMasquerade(podCIDRs ...netip.Prefix) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	t := weftTable()
	policy := nftables.ChainPolicyAccept
	c := &nftables.Chain{
		Name:     nftMasqChain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &policy,
	}
	var want []*nftables.Rule
	for _, p := range podCIDRs {
		want = append(want, masqRules(t, c, p)...)
	}
	if rules, err := conn.GetRules(t, c); err == nil && sameTags(rules, want) {
		return nil
	}
	conn.AddTable(t)
	conn.AddChain(c)
	conn.FlushChain(c)
	for _, r := range want {
		conn.AddRule(r)
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("write nftables masquerade rules for %v: %w", podCIDRs, err)
	}
	return nil
}

// sameTags reports whether have holds the rules of want, by their tags.
func sameTags(have, want []*nftables.Rule) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range have {
		if !bytes.Equal(have[i].UserData, want[i].UserData) {
			return false
		}
	}
	return true
}

// removeNftables deletes weft's table with everything in it (weft reset).
func removeNftables() error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	if _, err := conn.ListTableOfFamily(nftTable, nftables.TableFamilyINet); err != nil {
		return nil
	}
	conn.DelTable(weftTable())
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("delete nftables table %s: %w", nftTable, err)
	}
	return nil
}
