package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The rendered rule set, in nft syntax (what the golden files show):
//
//	chain pol-forward { type filter hook forward priority 0; policy accept
//		ct state established,related accept
//		jump pol-egress
//		jump pol-ingress }
//	chain pol-input { type filter hook input priority 0; policy accept   (pod to node)
//		ct state established,related accept
//		jump pol-egress }
//	chain pol-egress {
//		meta nfproto ipv4 ip saddr . ip daddr . meta l4proto . th dport vmap @pol-egress-admin4      (Admin tier)
//		meta nfproto ipv4 ip saddr . ip daddr . meta l4proto . th dport @pol-egress-allow4 return
//		meta nfproto ipv4 ip saddr vmap @pol-egress-drop4            (isolated pod -> its drop chain)
//		meta nfproto ipv4 ip saddr . ip daddr . meta l4proto . th dport vmap @pol-egress-baseline4   (Baseline tier)
//		... the same for ipv6 }
//	chain pol-ingress {
//		meta nfproto ipv4 ip saddr @pol-node4 return                  (from this node)
//		meta nfproto ipv4 ip daddr . ip saddr . meta l4proto . th dport @pol-ingress-allow4 return
//		meta nfproto ipv4 ip daddr vmap @pol-ingress-drop4 ... }
//	chain pol-drop-in-10-32-0-5 {                                   (one per isolated pod and direction)
//		limit rate 5/second burst 5 packets log prefix "weft drop ingress ns/pod: " group 87
//		counter name "pol-drop-in-10-32-0-5" drop }
//
// The tier maps send Accept regions to return and Deny regions to the pod's
// drop chain; Pass regions are absent. The allow sets are concatenations with intervals (local pod . peer range .
// protocol range . port range), so a packet costs a constant number of
// lookups however many policies and peers there are.

const (
	chainForward = "pol-forward"
	chainInput   = "pol-input"
	chainIngress = "pol-ingress"
	chainEgress  = "pol-egress"
	ownPrefix    = "pol-"
)

type nftRule struct {
	text  string
	exprs []expr.Any
}

type nftChain struct {
	name  string
	hook  *nftables.ChainHook // nil: a regular chain
	rules []nftRule
}

type nftSet struct {
	set   nftables.Set // Table and ID are filled in when applied
	elems []nftables.SetElement
	text  []func() string                // describes each element, for Text
	byKey map[string]nftables.SetElement // see canonical
}

type dropTarget struct {
	namespace, name string
	dir             Direction
}

// nftState is the desired content of weft's policy chains, sets and counters.
type nftState struct {
	sets     []*nftSet
	chains   []*nftChain
	counters []string // named counters, sorted
	drops    map[string]dropTarget
}

// family describes what differs between IPv4 and IPv6.
type family struct {
	suffix  string // set name suffix
	nfproto byte
	name    string // nft keyword: ip or ip6
	addrLen uint32
	saddr   uint32 // offsets in the network header
	daddr   uint32
	keyType nftables.SetDatatype
}

var families = []family{
	{"4", unix.NFPROTO_IPV4, "ip", 4, 12, 16, nftables.TypeIPAddr},
	{"6", unix.NFPROTO_IPV6, "ip6", 16, 8, 24, nftables.TypeIP6Addr},
}

func (f family) has(a netip.Addr) bool { return int(f.addrLen)*8 == a.BitLen() }

// render computes the nftables objects for rs.
func render(rs RuleSet, cfg Config) *nftState {
	st := &nftState{drops: map[string]dropTarget{}}
	forward := &nftChain{name: chainForward, hook: nftables.ChainHookForward}
	input := &nftChain{name: chainInput, hook: nftables.ChainHookInput}
	ingress := &nftChain{name: chainIngress}
	egress := &nftChain{name: chainEgress}
	forward.rules = []nftRule{ctEstablished(), jump(chainEgress), jump(chainIngress)}
	input.rules = []nftRule{ctEstablished(), jump(chainEgress)}
	st.chains = []*nftChain{forward, input, egress, ingress}

	for _, f := range families {
		node := addrSet("pol-node"+f.suffix, f)
		for _, a := range rs.NodeAddrs {
			if f.has(a) {
				node.add(a.AsSlice(), a.String())
			}
		}
		st.sets = append(st.sets, node)
		ingress.rules = append(ingress.rules, lookupRule(f, node.set.Name, "saddr"))
		for _, dir := range []Direction{Egress, Ingress} {
			allow, drop := allowSet(dir, f), dropMap(dir, f)
			admin, baseline := tierMap(dir, TierAdmin, f), tierMap(dir, TierBaseline, f)
			for i := range rs.Pods {
				p := &rs.Pods[i]
				d := p.Dir(dir)
				chain := dropChainName(p, dir)
				for _, ip := range p.IPs {
					if !f.has(ip) {
						continue
					}
					admin.addRegions(ip, d.Admin.Regions, chain, f)
					if !d.Isolated() { // NetworkPolicy decides for the pods it isolates
						baseline.addRegions(ip, d.Baseline.Regions, chain, f)
						continue
					}
					drop.addVerdict(ip, chain)
					for _, e := range d.Allow {
						if f.has(e.Peer.From) {
							allow.addEntry(ip, e)
						}
					}
				}
			}
			st.sets = append(st.sets, admin, allow, drop, baseline)
			c := egress
			if dir == Ingress {
				c = ingress
			}
			c.rules = append(c.rules, tierRule(f, dir, admin.set.Name), allowRule(f, dir, allow.set.Name),
				vmapRule(f, dir, drop.set.Name), tierRule(f, dir, baseline.set.Name))
		}
	}
	for i := range rs.Pods {
		p := &rs.Pods[i]
		for _, dir := range []Direction{Ingress, Egress} {
			if d := p.Dir(dir); d.Isolated() || d.hasDeny() {
				name := dropChainName(p, dir)
				st.chains = append(st.chains, dropChain(name, p, dir, cfg))
				st.counters = append(st.counters, name)
				st.drops[name] = dropTarget{p.Namespace, p.Name, dir}
			}
		}
	}
	slices.Sort(st.counters)
	return st
}

// dropChainName names the drop chain and counter of a pod and direction
// after its first address, which is unique among the pods of a node.
func dropChainName(p *PodRules, dir Direction) string {
	d := "in"
	if dir == Egress {
		d = "eg"
	}
	ip := strings.NewReplacer(".", "-", ":", "-").Replace(p.IPs[0].String())
	return "pol-drop-" + d + "-" + ip
}

func dirWord(dir Direction) (short, self, peer string) {
	if dir == Egress {
		return "egress", "saddr", "daddr"
	}
	return "ingress", "daddr", "saddr"
}

func addrSet(name string, f family) *nftSet {
	return &nftSet{set: nftables.Set{Name: name, KeyType: f.keyType}}
}

func (s *nftSet) add(key []byte, text string) {
	s.elems = append(s.elems, nftables.SetElement{Key: key})
	s.text = append(s.text, func() string { return text })
}

func dropMap(dir Direction, f family) *nftSet {
	word, _, _ := dirWord(dir)
	return &nftSet{set: nftables.Set{
		Name: "pol-" + word + "-drop" + f.suffix, KeyType: f.keyType,
		IsMap: true, DataType: nftables.TypeVerdict,
	}}
}

func (s *nftSet) addVerdict(ip netip.Addr, chain string) {
	s.elems = append(s.elems, nftables.SetElement{
		Key:         ip.AsSlice(),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: chain},
	})
	s.text = append(s.text, func() string { return ip.String() + " : jump " + chain })
}

func allowSet(dir Direction, f family) *nftSet {
	word, _, _ := dirWord(dir)
	return &nftSet{set: nftables.Set{
		Name:          "pol-" + word + "-allow" + f.suffix,
		KeyType:       nftables.MustConcatSetType(f.keyType, f.keyType, nftables.TypeInetProto, nftables.TypeInetService),
		Interval:      true,
		Concatenation: true,
	}}
}

// addEntry adds local pod . peer range . protocol range . port range.
func (s *nftSet) addEntry(pod netip.Addr, e Entry) {
	protoFrom, protoTo := byte(e.Proto), byte(e.Proto)
	ports := e.Ports
	if e.Proto == ProtoAny {
		protoFrom, protoTo, ports = 0, 255, AllPorts
	}
	key := concatKey(pod, e.Peer.From, protoFrom, ports.From)
	end := concatKey(pod, e.Peer.To, protoTo, ports.To)
	s.elems = append(s.elems, nftables.SetElement{Key: key, KeyEnd: end})
	s.text = append(s.text, func() string {
		proto := fmt.Sprint(protoFrom)
		if protoFrom != protoTo {
			proto = fmt.Sprintf("%d-%d", protoFrom, protoTo)
		}
		return fmt.Sprintf("%s . %s . %s . %s", pod, e.Peer, proto, ports)
	})
}

// tierMap is the verdict map of one ClusterNetworkPolicy tier: local pod .
// peer range . protocol range . port range : return (Accept) or jump to the
// pod's drop chain (Deny). Pass regions are left out, so the packet goes
// on to the next tier.
func tierMap(dir Direction, t Tier, f family) *nftSet {
	word, _, _ := dirWord(dir)
	return &nftSet{set: nftables.Set{
		Name:          "pol-" + word + "-" + strings.ToLower(t.String()) + f.suffix,
		KeyType:       nftables.MustConcatSetType(f.keyType, f.keyType, nftables.TypeInetProto, nftables.TypeInetService),
		DataType:      nftables.TypeVerdict,
		IsMap:         true,
		Interval:      true,
		Concatenation: true,
	}}
}

func (s *nftSet) addRegions(pod netip.Addr, regions []Region, dropChain string, f family) {
	for _, r := range regions {
		if r.Action == ActionPass || !f.has(r.Peer.From) {
			continue
		}
		v := &expr.Verdict{Kind: expr.VerdictReturn}
		word := "return"
		if r.Action == ActionDeny {
			v = &expr.Verdict{Kind: expr.VerdictJump, Chain: dropChain}
			word = "jump " + dropChain
		}
		s.elems = append(s.elems, nftables.SetElement{
			Key:         concatKey(pod, r.Peer.From, byte(r.ProtoFrom), r.Ports.From),
			KeyEnd:      concatKey(pod, r.Peer.To, byte(r.ProtoTo), r.Ports.To),
			VerdictData: v,
		})
		s.text = append(s.text, func() string {
			proto := fmt.Sprint(uint8(r.ProtoFrom))
			if r.ProtoFrom != r.ProtoTo {
				proto = fmt.Sprintf("%d-%d", r.ProtoFrom, r.ProtoTo)
			}
			return fmt.Sprintf("%s . %s . %s . %s : %s", pod, r.Peer, proto, r.Ports, word)
		})
	}
}

func tierRule(f family, dir Direction, set string) nftRule {
	_, self, peer := dirWord(dir)
	words := f.addrLen / 4
	r := uint32(unix.NFT_REG32_00)
	ex := append(matchFamily(f),
		loadAddr(f, self, r),
		loadAddr(f, peer, r+words),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r + 2*words},
		&expr.Payload{DestRegister: r + 2*words + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: r, DestRegister: 0, IsDestRegSet: true, SetName: set})
	text := fmt.Sprintf("meta nfproto ipv%s %s %s . %s %s . meta l4proto . th dport vmap @%s",
		f.suffix, f.name, self, f.name, peer, set)
	return nftRule{text, ex}
}

// concatKey encodes a concatenation; every field is padded to 4 bytes.
func concatKey(pod, peer netip.Addr, proto byte, port uint16) []byte {
	k := append(pod.AsSlice(), peer.AsSlice()...)
	return append(k, proto, 0, 0, 0, byte(port>>8), byte(port), 0, 0)
}

// Expressions.

// comment is the rule's comment: its text without double quotes, so that
// `nft list` output stays parseable.
func comment(text string) []byte {
	text = strings.ReplaceAll(text, `"`, "'")
	if len(text) > 200 {
		sum := sha256.Sum256([]byte(text))
		text = text[:160] + " #" + hex.EncodeToString(sum[:8])
	}
	return userdata.AppendString(nil, userdata.TypeComment, text)
}

func ctEstablished() nftRule {
	return nftRule{"ct state established,related accept", []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: hostOrder(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: hostOrder(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: hostOrder(0)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}}
}

// hostOrder encodes in host byte order, as the ct state bitmask is.
func hostOrder(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

func jump(chain string) nftRule {
	return nftRule{"jump " + chain, []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}}
}

func matchFamily(f family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
	}
}

func loadAddr(f family, which string, reg uint32) expr.Any {
	off := f.saddr
	if which == "daddr" {
		off = f.daddr
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.addrLen}
}

func lookupRule(f family, set, which string) nftRule {
	ex := append(matchFamily(f), loadAddr(f, which, unix.NFT_REG32_00),
		&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: set},
		&expr.Verdict{Kind: expr.VerdictReturn})
	return nftRule{fmt.Sprintf("meta nfproto ipv%s %s %s @%s return", f.suffix, f.name, which, set), ex}
}

func allowRule(f family, dir Direction, set string) nftRule {
	_, self, peer := dirWord(dir)
	words := f.addrLen / 4 // 32-bit registers per address
	r := uint32(unix.NFT_REG32_00)
	ex := append(matchFamily(f),
		loadAddr(f, self, r),
		loadAddr(f, peer, r+words),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r + 2*words},
		&expr.Payload{DestRegister: r + 2*words + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: r, SetName: set},
		&expr.Verdict{Kind: expr.VerdictReturn})
	text := fmt.Sprintf("meta nfproto ipv%s %s %s . %s %s . meta l4proto . th dport @%s return",
		f.suffix, f.name, self, f.name, peer, set)
	return nftRule{text, ex}
}

func vmapRule(f family, dir Direction, set string) nftRule {
	_, self, _ := dirWord(dir)
	ex := append(matchFamily(f), loadAddr(f, self, unix.NFT_REG32_00),
		&expr.Lookup{SourceRegister: unix.NFT_REG32_00, DestRegister: 0, IsDestRegSet: true, SetName: set})
	return nftRule{fmt.Sprintf("meta nfproto ipv%s %s %s vmap @%s", f.suffix, f.name, self, set), ex}
}

func dropChain(name string, p *PodRules, dir Direction, cfg Config) *nftChain {
	c := &nftChain{name: name}
	if !cfg.NoLog {
		prefix := LogPrefix(dir, p.Key())
		c.rules = append(c.rules, nftRule{
			fmt.Sprintf("limit rate %d/second burst %d packets log prefix %q group %d", cfg.LogRate, cfg.LogRate, prefix, cfg.LogGroup),
			[]expr.Any{
				&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(cfg.LogRate), Unit: expr.LimitTimeSecond, Burst: cfg.LogRate},
				&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: cfg.LogGroup, Data: []byte(prefix)},
			},
		})
	}
	c.rules = append(c.rules, nftRule{fmt.Sprintf("counter name %q drop", name), []expr.Any{
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	return c
}

// Text renders the state in an nft-like syntax, for golden files and logs.
func (st *nftState) Text() string {
	var b strings.Builder
	for _, s := range st.sets {
		kind := "set"
		if s.set.IsMap {
			kind = "map"
		}
		fmt.Fprintf(&b, "%s %s {\n", kind, s.set.Name)
		lines := make([]string, len(s.text))
		for i, f := range s.text {
			lines[i] = f()
		}
		slices.Sort(lines)
		for _, l := range lines {
			fmt.Fprintf(&b, "\t%s\n", l)
		}
		b.WriteString("}\n")
	}
	for _, c := range st.chains {
		fmt.Fprintf(&b, "chain %s {\n", c.name)
		if c.hook != nil {
			fmt.Fprintf(&b, "\ttype filter hook %s priority 0; policy accept;\n", hookName(c.hook))
		}
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t%s\n", r.text)
		}
		b.WriteString("}\n")
	}
	for _, c := range st.counters {
		fmt.Fprintf(&b, "counter %s\n", c)
	}
	return b.String()
}

func hookName(h *nftables.ChainHook) string {
	switch *h {
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookInput:
		return "input"
	}
	return fmt.Sprint(*h)
}
