package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Proto is an IP protocol number (IANA).
type Proto uint8

// The protocols NetworkPolicy names, ProtoAny for rules without ports, and
// the ICMPs (what ping sends), which no port rule matches.
const (
	ProtoAny    Proto = 0
	ProtoICMP   Proto = 1
	ProtoTCP    Proto = 6
	ProtoUDP    Proto = 17
	ProtoICMPv6 Proto = 58
	ProtoSCTP   Proto = 132
)

var protoNames = map[Proto]string{ProtoAny: "any", ProtoICMP: "icmp", ProtoTCP: "tcp", ProtoUDP: "udp",
	ProtoICMPv6: "icmpv6", ProtoSCTP: "sctp"}

func (p Proto) String() string {
	if n, ok := protoNames[p]; ok {
		return n
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// HasPorts reports whether packets of the protocol carry ports that
// NetworkPolicy rules match: TCP, UDP and SCTP.
func (p Proto) HasPorts() bool { return p == ProtoTCP || p == ProtoUDP || p == ProtoSCTP }

// MarshalText writes the name String gives.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads what ParseProto reads.
func (p *Proto) UnmarshalText(b []byte) error {
	v, err := ParseProto(string(b))
	*p = v
	return err
}

// AddrRange is an inclusive range of addresses of one family.
type AddrRange struct {
	From, To netip.Addr
}

// Contains reports whether a lies in the range.
func (r AddrRange) Contains(a netip.Addr) bool {
	return a.BitLen() == r.From.BitLen() && r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0
}

func (r AddrRange) String() string {
	if r.From == r.To {
		return r.From.String()
	}
	return r.From.String() + "-" + r.To.String()
}

// PortRange is an inclusive range of ports.
type PortRange struct {
	From, To uint16
}

// AllPorts is the range of every port.
var AllPorts = PortRange{0, 65535}

// Contains reports whether p lies in the range.
func (r PortRange) Contains(p uint16) bool { return r.From <= p && p <= r.To }

func (r PortRange) String() string {
	if r.From == r.To {
		return fmt.Sprint(r.From)
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

// Entry allows traffic between a local pod and the peers in Peer, for
// protocol Proto and destination ports Ports. ProtoAny allows every protocol
// and port (Ports is then AllPorts).
type Entry struct {
	Peer  AddrRange
	Proto Proto
	Ports PortRange
}

// Matches reports whether a packet with this peer address, protocol and
// destination port is allowed by the entry.
func (e Entry) Matches(peer netip.Addr, proto Proto, port uint16) bool {
	if !e.Peer.Contains(peer) {
		return false
	}
	return e.Proto == ProtoAny || (e.Proto == proto && e.Ports.Contains(port))
}

func (e Entry) String() string {
	if e.Proto == ProtoAny {
		return e.Peer.String() + " any"
	}
	return fmt.Sprintf("%s %s/%s", e.Peer, e.Proto, e.Ports)
}

// Grant is an Entry as one policy allows it, before the entries of all
// policies are merged.
type Grant struct {
	Policy string // namespace/name
	Entry
}

// Direction is ingress (traffic to a pod) or egress (traffic from a pod).
type Direction uint8

// The two directions.
const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// MarshalText writes "ingress" or "egress".
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads "ingress" or "egress".
func (d *Direction) UnmarshalText(b []byte) error {
	switch string(b) {
	case "ingress":
		*d = Ingress
	case "egress":
		*d = Egress
	default:
		return fmt.Errorf("direction %q is neither ingress nor egress", b)
	}
	return nil
}

// DirRules is what one local pod may do in one direction.
type DirRules struct {
	// Policies that select the pod for this direction (namespace/name,
	// sorted). Empty: the pod is not isolated and everything is allowed.
	Policies []string
	// Grants are the allowances, per policy, deduplicated and sorted; they
	// explain verdicts.
	Grants []Grant
	// Allow is the union of Grants as disjoint entries, sorted: what the
	// applier renders and what Allows evaluates.
	Allow []Entry
	// Admin and Baseline are the ClusterNetworkPolicy tiers, decided
	// before and after the NetworkPolicies.
	Admin, Baseline TierRules
}

// hasDeny reports whether a tier may drop traffic of this direction, so
// the pod needs a drop chain.
func (d *DirRules) hasDeny() bool {
	for _, t := range []*TierRules{&d.Admin, &d.Baseline} {
		for _, r := range t.Regions {
			if r.Action == ActionDeny {
				return true
			}
		}
	}
	return false
}

// judged reports whether any policy of any tier may judge this direction.
func (d *DirRules) judged() bool {
	return d.Isolated() || len(d.Admin.Regions) > 0 || len(d.Baseline.Regions) > 0
}

// Isolated reports whether some policy selects the pod for this direction.
func (d *DirRules) Isolated() bool { return len(d.Policies) > 0 }

// PodRules holds the rules of one local pod.
type PodRules struct {
	Namespace, Name string
	IPs             []netip.Addr // sorted
	Ingress, Egress DirRules
}

// Key is namespace/name.
func (p *PodRules) Key() string { return p.Namespace + "/" + p.Name }

// Dir returns the rules of one direction.
func (p *PodRules) Dir(d Direction) *DirRules {
	if d == Egress {
		return &p.Egress
	}
	return &p.Ingress
}

// RuleSet is the compiled NetworkPolicy of one node. Build it with Compile;
// treat it as read-only.
type RuleSet struct {
	// NodeAddrs are this node's addresses: traffic from them to local pods
	// is always allowed (kubelet probes). Sorted.
	NodeAddrs []netip.Addr
	// Pods are the local pods with an IP, sorted by namespace/name.
	Pods []PodRules
	// Warnings name inputs that were ignored (invalid selectors, CIDRs,
	// protocols); the API server normally rejects them.
	Warnings []string
}

// Packet is what Allows decides on: a new connection (or datagram) from Src to
// Dst with protocol Proto and destination port Port (ignored for protocols
// without ports).
type Packet struct {
	Src, Dst netip.Addr
	Proto    Proto
	Port     uint16
}

func (p Packet) String() string {
	return fmt.Sprintf("%s -> %s %s/%d", p.Src, p.Dst, p.Proto, p.Port)
}

// DecisionKind says how one direction decided.
type DecisionKind uint8

// Decision kinds.
const (
	// NotLocal: the address is no local pod, so this node does not decide.
	NotLocal DecisionKind = iota
	// NotIsolated: no policy selects the pod for this direction.
	NotIsolated
	// AllowedByPolicy: a rule of Policies allows the packet.
	AllowedByPolicy
	// AllowedFromNode: the packet comes from this node (ingress only).
	AllowedFromNode
	// DefaultDeny: Policies select the pod and none of their rules matched.
	DefaultDeny
	// Loopback: traffic from a pod to its own address never leaves the
	// pod, so no policy applies.
	Loopback
	// NotAPod: the address is no pod's anywhere in the cluster (an
	// outside address, a node), so no policy judges this direction.
	NotAPod
	// AcceptedByCluster: a ClusterNetworkPolicy rule (Decision.Cluster)
	// accepts the packet.
	AcceptedByCluster
	// DeniedByCluster: a ClusterNetworkPolicy rule (Decision.Cluster)
	// denies the packet.
	DeniedByCluster
)

// Decision is the verdict of one direction.
type Decision struct {
	Kind     DecisionKind
	Pod      string   // namespace/name of the local pod, unless NotLocal
	Policies []string // see DecisionKind
	// Cluster is the ClusterNetworkPolicy rule that decided
	// (AcceptedByCluster, DeniedByCluster) or, for other kinds, the Admin
	// rule that passed the packet on to NetworkPolicy, if one did.
	Cluster *ClusterRule
}

// Allowed reports whether this direction lets the packet pass.
func (d Decision) Allowed() bool { return d.Kind != DefaultDeny && d.Kind != DeniedByCluster }

func (d Decision) describe(dir Direction) string {
	switch d.Kind {
	case NotLocal:
		return dir.String() + ": not a pod of this node"
	case NotIsolated:
		return fmt.Sprintf("%s: pod %s is selected by no policy for %s", dir, d.Pod, dir)
	case AllowedByPolicy:
		return fmt.Sprintf("%s of pod %s allowed by %s", dir, d.Pod, policyList(d.Policies))
	case AllowedFromNode:
		return fmt.Sprintf("%s of pod %s allowed: traffic from this node", dir, d.Pod)
	case Loopback:
		return fmt.Sprintf("%s: pod %s talks to itself", dir, d.Pod)
	case NotAPod:
		return dir.String() + ": not a pod; no policy judges it"
	case AcceptedByCluster:
		return fmt.Sprintf("%s of pod %s accepted by %s", dir, d.Pod, d.Cluster.text(dir))
	case DeniedByCluster:
		return fmt.Sprintf("%s of pod %s denied by %s", dir, d.Pod, d.Cluster.text(dir))
	}
	return fmt.Sprintf("default deny: pod %s is selected for %s by %s and no rule matched",
		d.Pod, dir, policyList(d.Policies))
}

func policyList(ps []string) string {
	if len(ps) == 1 {
		return "policy " + ps[0]
	}
	return "policies " + strings.Join(ps, ", ")
}

// Reason explains a verdict: the decision of the source pod's egress and the
// destination pod's ingress.
type Reason struct {
	Egress, Ingress Decision
}

// String says why: the first denying direction, else both allowances.
func (r Reason) String() string {
	if !r.Egress.Allowed() {
		return r.Egress.describe(Egress)
	}
	if !r.Ingress.Allowed() {
		return r.Ingress.describe(Ingress)
	}
	return r.Egress.describe(Egress) + "; " + r.Ingress.describe(Ingress)
}

// Allows evaluates the rule set for pkt as the kernel does for a new
// connection: the source pod's egress rules and the destination pod's ingress
// rules must both let it pass (a side that is not a local pod is not decided
// here). A pod's traffic to its own address never leaves it and is allowed. It evaluates the merged entries (DirRules.Allow), and names the
// policies from DirRules.Grants.
func (rs RuleSet) Allows(pkt Packet) (bool, Reason) {
	var r Reason
	if pkt.Src == pkt.Dst {
		if p := rs.podByIP(pkt.Src); p != nil {
			d := Decision{Kind: Loopback, Pod: p.Key()}
			return true, Reason{d, d}
		}
	}
	if p := rs.podByIP(pkt.Src); p != nil {
		r.Egress = decide(p, Egress, pkt.Dst, pkt)
	}
	if p := rs.podByIP(pkt.Dst); p != nil {
		if slices.Contains(rs.NodeAddrs, pkt.Src) && p.Ingress.judged() {
			r.Ingress = Decision{Kind: AllowedFromNode, Pod: p.Key()}
		} else {
			r.Ingress = decide(p, Ingress, pkt.Src, pkt)
		}
	}
	return r.Egress.Allowed() && r.Ingress.Allowed(), r
}

// decide runs the tiers: Admin, then NetworkPolicy for a pod it isolates,
// then Baseline. Accept and Deny are final; Pass goes on to the next tier.
func decide(p *PodRules, dir Direction, peer netip.Addr, pkt Packet) Decision {
	d := p.Dir(dir)
	var passed *ClusterRule
	if a, r, ok := d.Admin.lookup(peer, pkt.Proto, pkt.Port); ok {
		switch a {
		case ActionAccept:
			return Decision{Kind: AcceptedByCluster, Pod: p.Key(), Cluster: &r}
		case ActionDeny:
			return Decision{Kind: DeniedByCluster, Pod: p.Key(), Cluster: &r}
		}
		passed = &r
	}
	if d.Isolated() {
		dec := decideNP(p, d, peer, pkt)
		dec.Cluster = passed
		return dec
	}
	if a, r, ok := d.Baseline.lookup(peer, pkt.Proto, pkt.Port); ok {
		switch a {
		case ActionAccept:
			return Decision{Kind: AcceptedByCluster, Pod: p.Key(), Cluster: &r}
		case ActionDeny:
			return Decision{Kind: DeniedByCluster, Pod: p.Key(), Cluster: &r}
		}
	}
	return Decision{Kind: NotIsolated, Pod: p.Key(), Cluster: passed}
}

func decideNP(p *PodRules, d *DirRules, peer netip.Addr, pkt Packet) Decision {
	allowed := false
	for _, e := range d.Allow {
		if e.Matches(peer, pkt.Proto, pkt.Port) {
			allowed = true
			break
		}
	}
	if !allowed {
		return Decision{Kind: DefaultDeny, Pod: p.Key(), Policies: d.Policies}
	}
	var by []string
	for _, g := range d.Grants {
		if g.Matches(peer, pkt.Proto, pkt.Port) && !slices.Contains(by, g.Policy) {
			by = append(by, g.Policy)
		}
	}
	slices.Sort(by)
	return Decision{Kind: AllowedByPolicy, Pod: p.Key(), Policies: by}
}

func (rs RuleSet) podByIP(a netip.Addr) *PodRules {
	for i := range rs.Pods {
		if slices.Contains(rs.Pods[i].IPs, a) {
			return &rs.Pods[i]
		}
	}
	return nil
}

// Summary is the policy state of a node, as `weft status policy --json`
// shows it.
type Summary struct {
	Policies []PolicySummary `json:"policies"`
	Pods     []PodSummary    `json:"pods"`
}

// PolicySummary is one policy in force on this node: one that selects at
// least one local pod.
type PolicySummary struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Ingress   []string `json:"ingress"` // local pods (namespace/name) it selects for ingress
	Egress    []string `json:"egress"`  // local pods it selects for egress
}

// PodSummary is one local pod and the policies that isolate it.
type PodSummary struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	IPs       []string `json:"ips"`
	Ingress   []string `json:"ingressPolicies"` // empty: not isolated for ingress
	Egress    []string `json:"egressPolicies"`
	// IngressEntries and EgressEntries count the merged allow entries.
	IngressEntries int `json:"ingressEntries"`
	EgressEntries  int `json:"egressEntries"`
	// The ClusterNetworkPolicies that select the pod, per tier and
	// direction, in precedence order.
	IngressAdmin    []string `json:"ingressAdmin"`
	IngressBaseline []string `json:"ingressBaseline"`
	EgressAdmin     []string `json:"egressAdmin"`
	EgressBaseline  []string `json:"egressBaseline"`
}

// Summary lists the policies in force on this node and the local pods each
// selects, per direction, and per pod the policies that isolate it.
func (rs RuleSet) Summary() Summary {
	s := Summary{Policies: []PolicySummary{}, Pods: []PodSummary{}}
	byName := map[string]*PolicySummary{}
	get := func(key string) *PolicySummary {
		if p := byName[key]; p != nil {
			return p
		}
		ns, name, _ := strings.Cut(key, "/")
		p := &PolicySummary{Namespace: ns, Name: name, Ingress: []string{}, Egress: []string{}}
		byName[key] = p
		return p
	}
	for i := range rs.Pods {
		p := &rs.Pods[i]
		ips := make([]string, len(p.IPs))
		for j, a := range p.IPs {
			ips[j] = a.String()
		}
		s.Pods = append(s.Pods, PodSummary{
			Namespace: p.Namespace, Name: p.Name, IPs: ips,
			Ingress: slices.Clone(p.Ingress.Policies), Egress: slices.Clone(p.Egress.Policies),
			IngressEntries: len(p.Ingress.Allow), EgressEntries: len(p.Egress.Allow),
			IngressAdmin: nonNil(p.Ingress.Admin.Policies), IngressBaseline: nonNil(p.Ingress.Baseline.Policies),
			EgressAdmin: nonNil(p.Egress.Admin.Policies), EgressBaseline: nonNil(p.Egress.Baseline.Policies),
		})
		for _, pol := range p.Ingress.Policies {
			ps := get(pol)
			ps.Ingress = append(ps.Ingress, p.Key())
		}
		for _, pol := range p.Egress.Policies {
			ps := get(pol)
			ps.Egress = append(ps.Egress, p.Key())
		}
	}
	for _, p := range byName {
		s.Policies = append(s.Policies, *p)
	}
	slices.SortFunc(s.Policies, func(a, b PolicySummary) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	for i := range s.Pods {
		if s.Pods[i].Ingress == nil {
			s.Pods[i].Ingress = []string{}
		}
		if s.Pods[i].Egress == nil {
			s.Pods[i].Egress = []string{}
		}
	}
	return s
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return slices.Clone(s)
}
