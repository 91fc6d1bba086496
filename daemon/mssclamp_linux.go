package daemon

import (
	"bytes"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// tcpOptMaxseg is the kind of TCP's MSS option.
const tcpOptMaxseg = 2

// clampChains are the clamp's two base chains in weft's table.
func clampChains(t *nftables.Table) (out, in *nftables.Chain) {
	accept := nftables.ChainPolicyAccept
	mk := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: hook, Priority: nftables.ChainPriorityMangle, Policy: &accept}
	}
	return mk(nftClampOutChain, nftables.ChainHookPostrouting), mk(nftClampInChain, nftables.ChainHookPrerouting)
}

// exprs is the rule in nftables expressions.
func (r clampRule) exprs() []expr.Any {
	proto, offset, size := byte(unix.NFPROTO_IPV4), uint32(16), 4 // ip daddr
	if r.Dir == "from" {
		offset = 12 // ip saddr
	}
	if !r.Prefix.Addr().Is4() {
		proto, offset, size = unix.NFPROTO_IPV6, 24, 16 // ip6 daddr
		if r.Dir == "from" {
			offset = 8 // ip6 saddr
		}
	}
	mss := binaryutil.BigEndian.PutUint16(uint16(r.MSS))
	maxseg := func(e *expr.Exthdr) *expr.Exthdr {
		e.Op, e.Type, e.Offset, e.Len = expr.ExthdrOpTcpopt, tcpOptMaxseg, 2, 2
		return e
	}
	net := r.Prefix.Masked().Addr().AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(size)},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(size), Mask: maskBytesN(r.Prefix.Bits(), size), Xor: make([]byte, size)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net},
		// tcp flags syn (SYN and SYN-ACK)
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
		maxseg(&expr.Exthdr{DestRegister: 1}),
		&expr.Cmp{Op: expr.CmpOpGt, Register: 1, Data: mss},
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: mss},
		maxseg(&expr.Exthdr{SourceRegister: 1}),
	}
}

// syncMSSClamp makes the clamp chains hold exactly rules. When they
// already do (compared by the rules' tags), nothing is written; otherwise
// both chains are rewritten in one atomic batch.
func syncMSSClamp(rules []clampRule) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	t := weftTable()
	out, in := clampChains(t)
	want := map[string][][]byte{out.Name: nil, in.Name: nil}
	for _, r := range rules {
		name := out.Name
		if r.Dir == "from" {
			name = in.Name
		}
		want[name] = append(want[name], []byte(r.String()))
	}
	same := true
	for _, ch := range []*nftables.Chain{out, in} {
		have, err := conn.GetRules(t, ch)
		if err != nil || len(have) != len(want[ch.Name]) {
			same = false
			break
		}
		for i, r := range have {
			if !bytes.Equal(r.UserData, want[ch.Name][i]) {
				same = false
			}
		}
	}
	if same {
		return nil
	}
	conn.AddTable(t)
	for _, ch := range []*nftables.Chain{out, in} {
		conn.AddChain(ch)
		conn.FlushChain(ch)
	}
	for _, r := range rules {
		ch := out
		if r.Dir == "from" {
			ch = in
		}
		conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs(), UserData: []byte(r.String())})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("write nftables MSS clamp rules: %w", err)
	}
	return nil
}
