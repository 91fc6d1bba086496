package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) adds two tiers
// around NetworkPolicy: the Admin tier decides first, then NetworkPolicy
// for the pods it selects, then the Baseline tier. Within a tier, policies
// are ordered by priority (lower first) and then by name (the API leaves
// equal priorities to the implementation); within a policy, rules by
// their order. The first matching rule's action decides: Accept and Deny
// are final for the direction, Pass hands the packet to the next tier.
//
// The compiler flattens each tier of each pod and direction into disjoint
// regions (peer range x protocol range x port range), each carrying the
// action of the first rule that covers it, so the kernel decides with one
// lookup per tier however many policies there are.

// Tier is the Admin or the Baseline tier.
type Tier uint8

// The two tiers of ClusterNetworkPolicy.
const (
	TierAdmin Tier = iota
	TierBaseline
)

func (t Tier) String() string {
	if t == TierBaseline {
		return "Baseline"
	}
	return "Admin"
}

// MarshalText writes "Admin" or "Baseline".
func (t Tier) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// Action is what a ClusterNetworkPolicy rule does with the traffic it
// matches.
type Action uint8

// The actions of a rule.
const (
	ActionAccept Action = iota
	ActionDeny
	ActionPass
)

var actionNames = map[Action]string{ActionAccept: "Accept", ActionDeny: "Deny", ActionPass: "Pass"}

func (a Action) String() string { return actionNames[a] }

// MarshalText writes "Accept", "Deny" or "Pass".
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// ClusterRule names one rule of a ClusterNetworkPolicy.
type ClusterRule struct {
	Tier     Tier   `json:"tier"`
	Policy   string `json:"policy"` // the ClusterNetworkPolicy's name
	Priority int32  `json:"priority"`
	Index    int    `json:"rule"`           // index in spec.ingress or spec.egress, from 0
	Name     string `json:"name,omitempty"` // the rule's name, if it has one
	Action   Action `json:"action"`
}

func (r ClusterRule) text(dir Direction) string {
	s := fmt.Sprintf("%s ClusterNetworkPolicy %s (priority %d) %s[%d]", r.Tier, r.Policy, r.Priority, dir, r.Index)
	if r.Name != "" {
		s += fmt.Sprintf(" %q", r.Name)
	}
	return s
}

// Region is a box of traffic of one direction of a pod (peer addresses,
// protocols, destination ports) and the action of the first rule that
// covers it. Protocols without ports always have Ports == AllPorts.
type Region struct {
	Peer      AddrRange
	ProtoFrom Proto
	ProtoTo   Proto
	Ports     PortRange
	Action    Action
}

// Matches reports whether a packet with this peer, protocol and port lies
// in the region.
func (r Region) Matches(peer netip.Addr, proto Proto, port uint16) bool {
	return r.Peer.Contains(peer) && r.ProtoFrom <= proto && proto <= r.ProtoTo &&
		(!proto.HasPorts() || r.Ports.Contains(port))
}

func (r Region) String() string {
	proto := r.ProtoFrom.String()
	if r.ProtoFrom != r.ProtoTo {
		proto = fmt.Sprintf("%d-%d", r.ProtoFrom, r.ProtoTo)
	}
	return fmt.Sprintf("%s %s/%s %s", r.Peer, proto, r.Ports, r.Action)
}

// TierRules is one tier of one direction of a local pod.
type TierRules struct {
	// Policies are the ClusterNetworkPolicies of the tier whose subject
	// selects the pod and that have rules for this direction, in
	// precedence order.
	Policies []string
	// Regions are disjoint and sorted: what the kernel evaluates. Traffic
	// in none of them is not decided by the tier.
	Regions []Region
	// boxes are the rules' traffic in precedence order, to name the rule
	// behind a region's action.
	boxes []ruleBox
}

// lookup returns the action of the region that holds the packet and the
// first rule that matches it, if any.
func (t *TierRules) lookup(peer netip.Addr, proto Proto, port uint16) (Action, ClusterRule, bool) {
	for _, r := range t.Regions {
		if r.Matches(peer, proto, port) {
			return r.Action, t.rule(peer, proto, port), true
		}
	}
	return 0, ClusterRule{}, false
}

// rule names the first rule that matches the packet.
func (t *TierRules) rule(peer netip.Addr, proto Proto, port uint16) ClusterRule {
	for _, b := range t.boxes {
		if b.matches(peer, proto, port) {
			return b.rule
		}
	}
	return ClusterRule{}
}

// tierOf returns a pod's rules of one tier and direction.
func (p *PodRules) tierOf(t Tier, dir Direction) *TierRules {
	d := p.Dir(dir)
	if t == TierBaseline {
		return &d.Baseline
	}
	return &d.Admin
}

// sortedClusterPolicies orders the policies of one tier by precedence.
func sortedClusterPolicies(in []*cnp.ClusterNetworkPolicy, tier cnp.Tier) []*cnp.ClusterNetworkPolicy {
	var out []*cnp.ClusterNetworkPolicy
	for _, p := range in {
		if p != nil && p.Spec.Tier == tier {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *cnp.ClusterNetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Spec.Priority, b.Spec.Priority), strings.Compare(a.Name, b.Name))
	})
	return out
}

// box is a region before its rule is known.
type box struct {
	peer               AddrRange
	protoFrom, protoTo Proto
	ports              PortRange
}

func (a box) overlaps(c box) bool {
	return a.peer.From.BitLen() == c.peer.From.BitLen() &&
		c.peer.From.Compare(a.peer.To) <= 0 && a.peer.From.Compare(c.peer.To) <= 0 &&
		c.protoFrom <= a.protoTo && a.protoFrom <= c.protoTo &&
		c.ports.From <= a.ports.To && a.ports.From <= c.ports.To
}

// minus returns a without c, as disjoint boxes.
func (a box) minus(c box) []box {
	if !a.overlaps(c) {
		return []box{a}
	}
	var out []box
	for _, r := range subtractRange([]AddrRange{a.peer}, c.peer) {
		out = append(out, box{r, a.protoFrom, a.protoTo, a.ports})
	}
	mid := AddrRange{maxAddr(a.peer.From, c.peer.From), minAddr(a.peer.To, c.peer.To)}
	if a.protoFrom < c.protoFrom {
		out = append(out, box{mid, a.protoFrom, c.protoFrom - 1, a.ports})
	}
	if c.protoTo < a.protoTo {
		out = append(out, box{mid, c.protoTo + 1, a.protoTo, a.ports})
	}
	pf, pt := max(a.protoFrom, c.protoFrom), min(a.protoTo, c.protoTo)
	if a.ports.From < c.ports.From {
		out = append(out, box{mid, pf, pt, PortRange{a.ports.From, c.ports.From - 1}})
	}
	if c.ports.To < a.ports.To {
		out = append(out, box{mid, pf, pt, PortRange{c.ports.To + 1, a.ports.To}})
	}
	return out
}

func maxAddr(a, b netip.Addr) netip.Addr {
	if a.Less(b) {
		return b
	}
	return a
}

func minAddr(a, b netip.Addr) netip.Addr {
	if a.Less(b) {
		return a
	}
	return b
}

// clusterCompiler holds what the tiers share across pods.
type clusterCompiler struct {
	*compiler
	nodes     []*corev1.Node
	cache     map[string]TierRules
	peerCache map[string]peersOfRule
	selectors map[*metav1.LabelSelector]labels.Selector
}

// sel converts a selector of a ClusterNetworkPolicy once.
func (cc *clusterCompiler) sel(pol, what string, s *metav1.LabelSelector) labels.Selector {
	if l, ok := cc.selectors[s]; ok {
		return l
	}
	l := cc.selector("cluster/"+pol, what, s)
	cc.selectors[s] = l
	return l
}

// compileTiers fills the Admin and Baseline tiers of every local pod.
func (c *compiler) compileTiers(in Input, rules []*PodRules, infos []*podInfo) {
	cc := &clusterCompiler{compiler: c, nodes: in.Nodes, cache: map[string]TierRules{}, peerCache: map[string]peersOfRule{},
		selectors: map[*metav1.LabelSelector]labels.Selector{}}
	for _, t := range []struct {
		api  cnp.Tier
		tier Tier
	}{{cnp.AdminTier, TierAdmin}, {cnp.BaselineTier, TierBaseline}} {
		pols := sortedClusterPolicies(in.ClusterPolicies, t.api)
		if len(pols) == 0 {
			continue
		}
		for i, p := range infos {
			var sel []*cnp.ClusterNetworkPolicy
			for _, pol := range pols {
				if cc.subjectSelects(pol, p) {
					sel = append(sel, pol)
				}
			}
			for _, dir := range []Direction{Ingress, Egress} {
				cc.compileTier(t.tier, dir, sel, rules[i], p)
			}
		}
	}
}

func (cc *clusterCompiler) subjectSelects(pol *cnp.ClusterNetworkPolicy, p *podInfo) bool {
	s := pol.Spec.Subject
	switch {
	case s.Namespaces != nil:
		return cc.sel(pol.Name, "subject namespaces", s.Namespaces).Matches(cc.nsLabels[p.pod.Namespace])
	case s.Pods != nil:
		return cc.namespacedPod(pol.Name, "subject pods", s.Pods, p)
	}
	cc.warnf("ClusterNetworkPolicy %s: the subject selects neither namespaces nor pods; it selects nothing", pol.Name)
	return false
}

func (cc *clusterCompiler) namespacedPod(polName, what string, np *cnp.NamespacedPod, p *podInfo) bool {
	return cc.sel(polName, what+" namespaceSelector", &np.NamespaceSelector).Matches(cc.nsLabels[p.pod.Namespace]) &&
		cc.sel(polName, what+" podSelector", &np.PodSelector).Matches(p.labels)
}

// compileTier computes the regions of one tier and direction of a pod from
// the policies that select it, in precedence order. Pods selected by the
// same policies share regions, unless ingress named ports resolve on them.
func (cc *clusterCompiler) compileTier(tier Tier, dir Direction, pols []*cnp.ClusterNetworkPolicy, r *PodRules, p *podInfo) {
	tr := r.tierOf(tier, dir)
	var names []string
	for _, pol := range pols {
		if dir == Ingress && len(pol.Spec.Ingress) > 0 || dir == Egress && len(pol.Spec.Egress) > 0 {
			names = append(names, pol.Name)
		}
	}
	if len(names) == 0 {
		return
	}
	tr.Policies = names
	key := fmt.Sprint(tier, dir, names, addrFamilies(r.IPs))
	if dir == Ingress && usesNamedPorts(pols) {
		key += "\x00" + p.key // named ports resolve on the subject pod
	}
	if cached, ok := cc.cache[key]; ok {
		tr.Regions, tr.boxes = cached.Regions, cached.boxes
		return
	}
	var boxes []ruleBox
	add := func(rule ClusterRule, bs []box) {
		for _, b := range bs {
			boxes = append(boxes, ruleBox{b, rule})
		}
	}
	fams := addrFamilies(r.IPs)
	for _, pol := range pols {
		if dir == Ingress {
			for i, rule := range pol.Spec.Ingress {
				a, ok := cc.action(pol.Name, rule.Action)
				if !ok {
					continue
				}
				peers := cc.cachedIngressPeers(pol.Name, i, a, rule.From)
				add(ClusterRule{tier, pol.Name, pol.Spec.Priority, i, rule.Name, a}, cc.boxes(pol.Name, peers, nil, rule.Protocols, p, fams))
			}
			continue
		}
		for i, rule := range pol.Spec.Egress {
			a, ok := cc.action(pol.Name, rule.Action)
			if !ok {
				continue
			}
			peers, peerPods := cc.cachedEgressPeers(pol.Name, i, a, rule.To)
			add(ClusterRule{tier, pol.Name, pol.Spec.Priority, i, rule.Name, a}, cc.boxes(pol.Name, peers, peerPods, rule.Protocols, nil, fams))
		}
	}
	tr.Regions, tr.boxes = resolve(boxes), boxes
	cc.cache[key] = *tr
}

// usesNamedPorts reports whether an ingress rule of pols names a port.
func usesNamedPorts(pols []*cnp.ClusterNetworkPolicy) bool {
	for _, pol := range pols {
		for _, r := range pol.Spec.Ingress {
			for _, pr := range r.Protocols {
				if pr.DestinationNamedPort != "" {
					return true
				}
			}
		}
	}
	return false
}

func (cc *clusterCompiler) action(pol string, a cnp.ClusterNetworkPolicyRuleAction) (Action, bool) {
	switch a {
	case cnp.ClusterNetworkPolicyRuleActionAccept:
		return ActionAccept, true
	case cnp.ClusterNetworkPolicyRuleActionDeny:
		return ActionDeny, true
	case cnp.ClusterNetworkPolicyRuleActionPass:
		return ActionPass, true
	}
	cc.warnf("ClusterNetworkPolicy %s: unknown action %q; the rule is ignored", pol, a)
	return 0, false
}

// failClosed: a peer with no field this version knows matches nothing in an
// Accept rule and everything in a Deny or Pass rule, as the API asks.
func failClosed(a Action) []AddrRange {
	if a == ActionAccept {
		return nil
	}
	return []AddrRange{allV4, allV6}
}

type peersOfRule struct {
	ranges []AddrRange
	pods   map[*podInfo]bool
}

// cachedIngressPeers and cachedEgressPeers compute a rule's peers once for
// all the pods its policy selects.
func (cc *clusterCompiler) cachedIngressPeers(pol string, i int, a Action, peers []cnp.ClusterNetworkPolicyIngressPeer) []AddrRange {
	key := fmt.Sprintf("in\x00%s\x00%d", pol, i)
	if p, ok := cc.peerCache[key]; ok {
		return p.ranges
	}
	r := cc.ingressPeers(pol, a, peers)
	cc.peerCache[key] = peersOfRule{ranges: r}
	return r
}

func (cc *clusterCompiler) cachedEgressPeers(pol string, i int, a Action, peers []cnp.ClusterNetworkPolicyEgressPeer) ([]AddrRange, map[*podInfo]bool) {
	key := fmt.Sprintf("eg\x00%s\x00%d", pol, i)
	if p, ok := cc.peerCache[key]; ok {
		return p.ranges, p.pods
	}
	r, pods := cc.egressPeers(pol, a, peers)
	cc.peerCache[key] = peersOfRule{r, pods}
	return r, pods
}

// ingressPeers returns the source addresses of an ingress rule: the pods
// its namespace and pod peers select.
func (cc *clusterCompiler) ingressPeers(pol string, a Action, peers []cnp.ClusterNetworkPolicyIngressPeer) []AddrRange {
	var out []AddrRange
	for _, peer := range peers {
		switch {
		case peer.Namespaces != nil || peer.Pods != nil:
			for _, p := range cc.peerPods(pol, peer.Namespaces, peer.Pods) {
				for _, ip := range p.ips {
					out = append(out, AddrRange{ip, ip})
				}
			}
		default:
			out = append(out, failClosed(a)...)
		}
	}
	return coalesce(out)
}

// egressPeers returns the destination addresses of an egress rule (pods,
// nodes, networks) and the pods among them, for named ports.
func (cc *clusterCompiler) egressPeers(pol string, a Action, peers []cnp.ClusterNetworkPolicyEgressPeer) ([]AddrRange, map[*podInfo]bool) {
	var out []AddrRange
	pods := map[*podInfo]bool{}
	for _, peer := range peers {
		known := false
		if peer.Namespaces != nil || peer.Pods != nil {
			known = true
			for _, p := range cc.peerPods(pol, peer.Namespaces, peer.Pods) {
				pods[p] = true
				for _, ip := range p.ips {
					out = append(out, AddrRange{ip, ip})
				}
			}
		}
		if peer.Nodes != nil {
			known = true
			sel := cc.sel(pol, "peer nodes", peer.Nodes)
			for _, n := range cc.nodes {
				if n == nil || !sel.Matches(labels.Set(n.Labels)) {
					continue
				}
				for _, na := range n.Status.Addresses {
					if ip, err := netip.ParseAddr(na.Address); err == nil {
						out = append(out, AddrRange{ip.Unmap(), ip.Unmap()})
					}
				}
			}
		}
		for _, n := range peer.Networks {
			known = true
			pfx, err := netip.ParsePrefix(string(n))
			if err != nil {
				cc.warnf("ClusterNetworkPolicy %s: network %q: %v; it matches nothing", pol, n, err)
				continue
			}
			out = append(out, prefixRange(unmapPrefix(pfx)))
		}
		if len(peer.DomainNames) > 0 {
			known = true
			cc.warnf("ClusterNetworkPolicy %s: domain names are not supported; the peer matches nothing", pol)
		}
		if !known {
			out = append(out, failClosed(a)...)
		}
	}
	out = coalesce(out)
	// Pods inside networks count for named ports too.
	for _, p := range cc.pods {
		if !pods[p] {
			for _, ip := range p.ips {
				if inSortedRanges(out, ip) {
					pods[p] = true
				}
			}
		}
	}
	return out, pods
}

// inSortedRanges reports whether a lies in one of rs, which are sorted and
// disjoint (as coalesce returns them).
func inSortedRanges(rs []AddrRange, a netip.Addr) bool {
	i, _ := slices.BinarySearchFunc(rs, a, func(r AddrRange, a netip.Addr) int {
		if r.To.Compare(a) < 0 {
			return -1
		}
		if r.From.Compare(a) > 0 {
			return 1
		}
		return 0
	})
	return i < len(rs) && rs[i].Contains(a)
}

func (cc *clusterCompiler) peerPods(pol string, nsSel *metav1.LabelSelector, np *cnp.NamespacedPod) []*podInfo {
	var out []*podInfo
	if nsSel != nil {
		sel := cc.sel(pol, "peer namespaces", nsSel)
		for _, ns := range cc.nsNames {
			if sel.Matches(cc.nsLabels[ns]) {
				out = append(out, cc.byNS[ns]...)
			}
		}
	}
	if np != nil {
		for _, ns := range cc.nsNames {
			for _, p := range cc.byNS[ns] {
				if cc.namespacedPod(pol, "peer pods", np, p) {
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// boxes returns the traffic a rule matches: its peers times its protocols.
// Named ports resolve on subject (ingress) or on the destination pods among
// peerPods (egress).
func (cc *clusterCompiler) boxes(pol string, peers []AddrRange, peerPods map[*podInfo]bool, protos []cnp.ClusterNetworkPolicyProtocol, subject *podInfo, fams []int) []box {
	var out []box
	addPeers := func(rs []AddrRange, pf, pt Proto, ports PortRange) {
		for _, r := range rs {
			if slices.Contains(fams, r.From.BitLen()) {
				out = append(out, box{r, pf, pt, ports})
			}
		}
	}
	if len(protos) == 0 {
		addPeers(peers, 0, 255, AllPorts)
		return out
	}
	for _, pr := range protos {
		var proto Proto
		var port *cnp.Port
		switch {
		case pr.TCP != nil:
			proto, port = ProtoTCP, pr.TCP.DestinationPort
		case pr.UDP != nil:
			proto, port = ProtoUDP, pr.UDP.DestinationPort
		case pr.SCTP != nil:
			proto, port = ProtoSCTP, pr.SCTP.DestinationPort
		case pr.DestinationNamedPort != "":
			out = append(out, cc.namedBoxes(pr.DestinationNamedPort, peers, peerPods, subject, fams)...)
			continue
		default:
			cc.warnf("ClusterNetworkPolicy %s: a protocol entry names no protocol; it matches nothing", pol)
			continue
		}
		ports := AllPorts
		if port != nil {
			switch {
			case port.Range != nil && port.Range.Start >= 0 && port.Range.Start <= port.Range.End && port.Range.End <= 65535:
				ports = PortRange{uint16(port.Range.Start), uint16(port.Range.End)}
			case port.Range == nil && port.Number > 0 && port.Number <= 65535:
				ports = PortRange{uint16(port.Number), uint16(port.Number)}
			default:
				cc.warnf("ClusterNetworkPolicy %s: destination port %+v is invalid; it matches nothing", pol, *port)
				continue
			}
		}
		addPeers(peers, proto, proto, ports)
	}
	return out
}

// namedBoxes resolves a named port: on the subject pod for ingress (every
// peer, that pod's port), on each destination pod among the peers for
// egress.
func (cc *clusterCompiler) namedBoxes(name string, peers []AddrRange, peerPods map[*podInfo]bool, subject *podInfo, fams []int) []box {
	var out []box
	for _, proto := range []Proto{ProtoTCP, ProtoUDP, ProtoSCTP} {
		if subject != nil {
			for _, n := range subject.namedPort(name, proto) {
				for _, r := range peers {
					if slices.Contains(fams, r.From.BitLen()) {
						out = append(out, box{r, proto, proto, PortRange{n, n}})
					}
				}
			}
			continue
		}
		for _, pp := range cc.podsWithPort(name, proto) {
			if !peerPods[pp.pod] {
				continue
			}
			for _, ip := range pp.pod.ips {
				if inSortedRanges(peers, ip) && slices.Contains(fams, ip.BitLen()) {
					out = append(out, box{AddrRange{ip, ip}, proto, proto, PortRange{pp.port, pp.port}})
				}
			}
		}
	}
	return out
}
