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
// address.
func masqRules(t *nftables.Table, c *nftables.Chain, podCIDR netip.Prefix) []*nftables.Rule {
	net := podCIDR.Masked().Addr().AsSlice()
	mask := maskBytes(podCIDR.Bits())
	loadMasked := func(offset uint32) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		}
	}
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
	exprs = append(exprs, loadMasked(12)...) // ip saddr
	exprs = append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net})
	exprs = append(exprs, loadMasked(16)...) // ip daddr
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

func maskBytes(bits int) []byte {
	m := make([]byte, 4)
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

func weftTable() *nftables.Table {
	return &nftables.Table{Name: nftTable, Family: nftables.TableFamilyINet}
}

// syncMasquerade makes the masquerade chain hold exactly weft's rule for
// podCIDR. When it already does, nothing is written; otherwise the chain is
// rewritten in one atomic batch.
func syncMasquerade(podCIDR netip.Prefix) error {
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
	if rules, err := conn.GetRules(t, c); err == nil && len(rules) == 1 && bytes.Equal(rules[0].UserData, masqTag(podCIDR)) {
		return nil
	}
	conn.AddTable(t)
	conn.AddChain(c)
	conn.FlushChain(c)
	for _, r := range masqRules(t, c, podCIDR) {
		conn.AddRule(r)
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("write nftables masquerade rules for %s: %w", podCIDR, err)
	}
	return nil
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
