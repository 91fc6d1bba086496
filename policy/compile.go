package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// Input is everything the compiler looks at. The objects are read, never
// modified; nil entries are skipped.
type Input struct {
	// NodeName is this node: its pods are those with spec.nodeName ==
	// NodeName and a pod IP.
	NodeName   string
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the ClusterNetworkPolicies (Admin and Baseline
	// tiers).
	ClusterPolicies []*cnp.ClusterNetworkPolicy
	// Nodes are the cluster's nodes, for ClusterNetworkPolicy egress peers
	// that select nodes.
	Nodes []*corev1.Node
	// NodeAddrs are this node's own addresses; traffic from them to local
	// pods is always allowed (kubelet probes).
	NodeAddrs []netip.Addr
}

// namespaceNameLabel is set on every namespace by the API server; it is
// assumed for namespaces the input does not list.
const namespaceNameLabel = "kubernetes.io/metadata.name"

type podInfo struct {
	pod    *corev1.Pod
	key    string
	ips    []netip.Addr
	labels labels.Set
	local  bool
}

// namedPort returns the port numbers the pod names name for proto.
func (p *podInfo) namedPort(name string, proto Proto) []uint16 {
	var out []uint16
	scan := func(cs []corev1.Container) {
		for _, c := range cs {
			for _, cp := range c.Ports {
				if cp.Name == name && protoOf(cp.Protocol) == proto && cp.ContainerPort > 0 && cp.ContainerPort < 65536 {
					out = append(out, uint16(cp.ContainerPort))
				}
			}
		}
	}
	scan(p.pod.Spec.Containers)
	scan(p.pod.Spec.InitContainers)
	return out
}

type compiler struct {
	nsLabels map[string]labels.Set
	nsNames  []string           // sorted: every namespace of the input or of a pod
	egress   map[string][]Grant // policy -> its egress grants (the same for every pod it selects)
	peerSets map[string]peerSet // identical peer lists are computed once
	named    map[namedKey][]podPort
	pods     []*podInfo
	byNS     map[string][]*podInfo
	warnings []string
}

// Compile computes the rule set of the pods on in.NodeName. It is pure:
// the same input gives the same RuleSet.
func Compile(in Input) RuleSet {
	c := newCompiler(in)
	rs := RuleSet{NodeAddrs: sortedAddrs(in.NodeAddrs)}
	local := map[*podInfo]*PodRules{}
	var order []*podInfo
	owner := map[netip.Addr]string{} // a local address belongs to one pod only
	for _, p := range c.localPods() {
		var ips []netip.Addr
		for _, a := range p.ips {
			if o, dup := owner[a]; dup {
				c.warnf("pods %s and %s on this node both have address %s; it is %s's", o, p.key, a, o)
				continue
			}
			owner[a] = p.key
			ips = append(ips, a)
		}
		if len(ips) > 0 {
			local[p] = &PodRules{Namespace: p.pod.Namespace, Name: p.pod.Name, IPs: ips}
			order = append(order, p)
		}
	}
	for _, pol := range sortedPolicies(in.Policies) {
		c.compilePolicy(pol, local)
	}
	if len(in.ClusterPolicies) > 0 {
		rules := make([]*PodRules, len(order))
		for i, p := range order {
			rules[i] = local[p]
		}
		c.compileTiers(in, rules, order)
	}
	// Egress depends only on the selecting policies: pods selected by the
	// same ones share their merged entries.
	type merged struct {
		grants []Grant
		allow  []Entry
	}
	egressCache := map[string]merged{}
	for _, p := range order {
		r := local[p]
		slices.Sort(r.Ingress.Policies)
		r.Ingress.Grants = dedupGrants(r.Ingress.Grants)
		r.Ingress.Allow = mergeGrants(r.Ingress.Grants, r.IPs)
		slices.Sort(r.Egress.Policies)
		key := fmt.Sprint(r.Egress.Policies, addrFamilies(r.IPs))
		m, ok := egressCache[key]
		if !ok {
			for _, pol := range r.Egress.Policies {
				m.grants = append(m.grants, c.egress[pol]...)
			}
			m.grants = dedupGrants(m.grants)
			m.allow = mergeGrants(m.grants, r.IPs)
			egressCache[key] = m
		}
		r.Egress.Grants, r.Egress.Allow = m.grants, m.allow
		rs.Pods = append(rs.Pods, *r)
	}
	slices.SortFunc(rs.Pods, func(a, b PodRules) int { return strings.Compare(a.Key(), b.Key()) })
	slices.Sort(c.warnings)
	rs.Warnings = slices.Compact(c.warnings)
	return rs
}

func newCompiler(in Input) *compiler {
	c := &compiler{nsLabels: map[string]labels.Set{}, byNS: map[string][]*podInfo{}, egress: map[string][]Grant{},
		peerSets: map[string]peerSet{}}
	for _, ns := range in.Namespaces {
		if ns == nil {
			continue
		}
		l := labels.Set{}
		for k, v := range ns.Labels {
			l[k] = v
		}
		if _, ok := l[namespaceNameLabel]; !ok {
			l[namespaceNameLabel] = ns.Name
		}
		c.nsLabels[ns.Name] = l
	}
	for _, pod := range in.Pods {
		if pod == nil || pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := podIPs(pod)
		if len(ips) == 0 {
			continue
		}
		p := &podInfo{
			pod: pod, key: pod.Namespace + "/" + pod.Name, ips: ips,
			labels: labels.Set(pod.Labels),
			local:  in.NodeName != "" && pod.Spec.NodeName == in.NodeName,
		}
		c.pods = append(c.pods, p)
		c.byNS[pod.Namespace] = append(c.byNS[pod.Namespace], p)
		if _, ok := c.nsLabels[pod.Namespace]; !ok {
			c.nsLabels[pod.Namespace] = labels.Set{namespaceNameLabel: pod.Namespace}
		}
	}
	for ns := range c.nsLabels {
		c.nsNames = append(c.nsNames, ns)
	}
	slices.Sort(c.nsNames)
	return c
}

// localPods returns the pods of this node, sorted by namespace/name.
func (c *compiler) localPods() []*podInfo {
	var out []*podInfo
	for _, p := range c.pods {
		if p.local {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *podInfo) int { return strings.Compare(a.key, b.key) })
	return out
}

// podIPs returns the pod's valid addresses, sorted and unique.
func podIPs(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil {
			a = a.Unmap()
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	for _, ip := range pod.Status.PodIPs {
		add(ip.IP)
	}
	if pod.Status.PodIP != "" {
		add(pod.Status.PodIP)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func sortedAddrs(in []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range in {
		if a.IsValid() {
			out = append(out, a.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

func sortedPolicies(in []*networkingv1.NetworkPolicy) []*networkingv1.NetworkPolicy {
	out := slices.DeleteFunc(slices.Clone(in), func(p *networkingv1.NetworkPolicy) bool { return p == nil })
	slices.SortFunc(out, func(a, b *networkingv1.NetworkPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

func (c *compiler) warnf(format string, args ...any) {
	c.warnings = append(c.warnings, fmt.Sprintf(format, args...))
}

// selector converts a label selector; an invalid one selects nothing.
func (c *compiler) selector(polKey, what string, s *metav1.LabelSelector) labels.Selector {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		c.warnf("policy %s: %s: %v; it selects nothing", polKey, what, err)
		return labels.Nothing()
	}
	return sel
}

// policyTypes returns the directions a policy applies to.
func policyTypes(pol *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(pol.Spec.PolicyTypes) == 0 {
		return true, len(pol.Spec.Egress) > 0
	}
	for _, t := range pol.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func (c *compiler) compilePolicy(pol *networkingv1.NetworkPolicy, local map[*podInfo]*PodRules) {
	key := pol.Namespace + "/" + pol.Name
	sel := c.selector(key, "podSelector", &pol.Spec.PodSelector)
	var targets []*podInfo
	for _, p := range c.byNS[pol.Namespace] {
		if local[p] != nil && sel.Matches(p.labels) {
			targets = append(targets, p)
		}
	}
	if len(targets) == 0 {
		return
	}
	ingress, egress := policyTypes(pol)
	if ingress {
		rules := make([]peerSet, len(pol.Spec.Ingress))
		for i, r := range pol.Spec.Ingress {
			rules[i] = c.peers(key, pol.Namespace, r.From)
		}
		for _, t := range targets {
			d := &local[t].Ingress
			d.Policies = append(d.Policies, key)
			for i, r := range pol.Spec.Ingress {
				d.Grants = c.ingressGrants(d.Grants, key, rules[i], r.Ports, t)
			}
		}
	}
	if egress {
		rules := make([]peerSet, len(pol.Spec.Egress))
		var grants []Grant
		for i, r := range pol.Spec.Egress {
			rules[i] = c.peers(key, pol.Namespace, r.To)
			grants = c.egressGrants(grants, key, rules[i], r.Ports)
		}
		for _, t := range targets {
			local[t].Egress.Policies = append(local[t].Egress.Policies, key)
		}
		c.egress[key] = grants
	}
}

// peerSet is the peers of one rule.
type peerSet struct {
	all    bool              // no peers listed: every address
	ranges []AddrRange       // addresses: the pods' IPs and the ipBlocks
	pods   map[*podInfo]bool // pods selected by selectors (for named ports)
	blocks []AddrRange       // ipBlock ranges (for named ports of pods inside)
}

var (
	allV4 = AddrRange{netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255})}
	allV6 = AddrRange{netip.IPv6Unspecified(), netip.AddrFrom16([16]byte{
		255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255})}
)

// peers returns the peers of one rule; many policies repeat the same peers,
// so results are cached by their text (and the namespace, when a peer
// selects pods of the policy's own namespace).
func (c *compiler) peers(polKey, polNS string, peers []networkingv1.NetworkPolicyPeer) peerSet {
	if len(peers) == 0 {
		return peerSet{all: true, ranges: []AddrRange{allV4, allV6}}
	}
	var key strings.Builder
	for _, p := range peers {
		if p.PodSelector != nil && p.NamespaceSelector == nil {
			key.WriteString(polNS)
		}
		key.WriteString(p.String())
		key.WriteByte(0)
	}
	if ps, ok := c.peerSets[key.String()]; ok {
		return ps
	}
	ps := c.computePeers(polKey, polNS, peers)
	c.peerSets[key.String()] = ps
	return ps
}

func (c *compiler) computePeers(polKey, polNS string, peers []networkingv1.NetworkPolicyPeer) peerSet {
	ps := peerSet{pods: map[*podInfo]bool{}}
	for _, peer := range peers {
		switch {
		case peer.IPBlock != nil:
			rs, err := blockRanges(peer.IPBlock)
			if err != nil {
				c.warnf("policy %s: %v; the peer matches nothing", polKey, err)
				continue
			}
			ps.ranges = append(ps.ranges, rs...)
			ps.blocks = append(ps.blocks, rs...)
		case peer.PodSelector != nil || peer.NamespaceSelector != nil:
			for _, p := range c.selectPeerPods(polKey, polNS, peer) {
				if !ps.pods[p] {
					ps.pods[p] = true
					for _, a := range p.ips {
						ps.ranges = append(ps.ranges, AddrRange{a, a})
					}
				}
			}
		default:
			c.warnf("policy %s: a peer has neither selectors nor ipBlock; it matches nothing", polKey)
		}
	}
	ps.ranges = coalesce(ps.ranges)
	return ps
}

func (c *compiler) selectPeerPods(polKey, polNS string, peer networkingv1.NetworkPolicyPeer) []*podInfo {
	podSel := labels.Everything()
	if peer.PodSelector != nil {
		podSel = c.selector(polKey, "peer podSelector", peer.PodSelector)
	}
	namespaces := []string{polNS}
	if peer.NamespaceSelector != nil {
		nsSel := c.selector(polKey, "peer namespaceSelector", peer.NamespaceSelector)
		namespaces = nil
		for _, ns := range c.nsNames {
			if nsSel.Matches(c.nsLabels[ns]) {
				namespaces = append(namespaces, ns)
			}
		}
	}
	var out []*podInfo
	for _, ns := range namespaces {
		for _, p := range c.byNS[ns] {
			if podSel.Matches(p.labels) {
				out = append(out, p)
			}
		}
	}
	return out
}

// blockRanges returns an ipBlock as disjoint ranges: its CIDR without the
// excepted CIDRs.
func blockRanges(b *networkingv1.IPBlock) ([]AddrRange, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return nil, fmt.Errorf("ipBlock cidr %q: %w", b.CIDR, err)
	}
	out := []AddrRange{prefixRange(unmapPrefix(cidr))}
	for _, e := range b.Except {
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			return nil, fmt.Errorf("ipBlock except %q: %w", e, err)
		}
		out = subtractRange(out, prefixRange(unmapPrefix(ex)))
	}
	return out, nil
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104) into
// its IPv4 prefix, as pod addresses are compared unmapped; it masks.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() {
		return netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0)).Masked()
	}
	return p.Masked()
}

func protoOf(p corev1.Protocol) Proto {
	switch p {
	case "", corev1.ProtocolTCP:
		return ProtoTCP
	case corev1.ProtocolUDP:
		return ProtoUDP
	case corev1.ProtocolSCTP:
		return ProtoSCTP
	}
	return ProtoAny // unknown
}

// portSpec is one NetworkPolicyPort, validated.
type portSpec struct {
	proto Proto
	name  string    // named port, or
	ports PortRange // numbers (ports.From > ports.To: matches nothing)
}

func (c *compiler) portSpecs(polKey string, ports []networkingv1.NetworkPolicyPort) []portSpec {
	var out []portSpec
	for _, p := range ports {
		proto := ProtoTCP
		if p.Protocol != nil {
			proto = protoOf(*p.Protocol)
			if proto == ProtoAny {
				c.warnf("policy %s: unknown protocol %q; the port matches nothing", polKey, *p.Protocol)
				continue
			}
		}
		switch {
		case p.Port == nil:
			out = append(out, portSpec{proto: proto, ports: AllPorts})
		case p.Port.Type == intstr.String:
			out = append(out, portSpec{proto: proto, name: p.Port.StrVal})
		default:
			from := p.Port.IntVal
			to := from
			if p.EndPort != nil {
				to = *p.EndPort
			}
			if from < 0 || to > 65535 || from > to {
				c.warnf("policy %s: port range %d-%d is empty or invalid; it matches nothing", polKey, from, to)
				continue
			}
			out = append(out, portSpec{proto: proto, ports: PortRange{uint16(from), uint16(to)}})
		}
	}
	return out
}

func (c *compiler) ingressGrants(out []Grant, polKey string, peers peerSet, ports []networkingv1.NetworkPolicyPort, target *podInfo) []Grant {
	if len(ports) == 0 {
		for _, r := range peers.ranges {
			out = append(out, Grant{polKey, Entry{Peer: r, Proto: ProtoAny, Ports: AllPorts}})
		}
		return out
	}
	for _, ps := range c.portSpecs(polKey, ports) {
		nums := []PortRange{ps.ports}
		if ps.name != "" {
			nums = nums[:0]
			for _, n := range target.namedPort(ps.name, ps.proto) {
				nums = append(nums, PortRange{n, n})
			}
		}
		for _, pr := range nums {
			for _, r := range peers.ranges {
				out = append(out, Grant{polKey, Entry{Peer: r, Proto: ps.proto, Ports: pr}})
			}
		}
	}
	return out
}

func (c *compiler) egressGrants(out []Grant, polKey string, peers peerSet, ports []networkingv1.NetworkPolicyPort) []Grant {
	if len(ports) == 0 {
		for _, r := range peers.ranges {
			out = append(out, Grant{polKey, Entry{Peer: r, Proto: ProtoAny, Ports: AllPorts}})
		}
		return out
	}
	for _, ps := range c.portSpecs(polKey, ports) {
		if ps.name == "" {
			for _, r := range peers.ranges {
				out = append(out, Grant{polKey, Entry{Peer: r, Proto: ps.proto, Ports: ps.ports}})
			}
			continue
		}
		// A named port resolves on each destination pod the peers admit.
		byPort := map[uint16][]AddrRange{}
		for _, pp := range c.podsWithPort(ps.name, ps.proto) {
			for _, a := range pp.pod.ips {
				if peers.all || peers.pods[pp.pod] || inRanges(peers.blocks, a) {
					byPort[pp.port] = append(byPort[pp.port], AddrRange{a, a})
				}
			}
		}
		for _, n := range slices.Sorted(maps.Keys(byPort)) {
			for _, r := range coalesce(byPort[n]) {
				out = append(out, Grant{polKey, Entry{Peer: r, Proto: ps.proto, Ports: PortRange{n, n}}})
			}
		}
	}
	return out
}

type namedKey struct {
	name  string
	proto Proto
}

type podPort struct {
	pod  *podInfo
	port uint16
}

// podsWithPort returns the pods that name a port name for proto, with its
// numbers; the index is built on first use.
func (c *compiler) podsWithPort(name string, proto Proto) []podPort {
	if c.named == nil {
		c.named = map[namedKey][]podPort{}
		for _, p := range c.pods {
			for _, cs := range [][]corev1.Container{p.pod.Spec.Containers, p.pod.Spec.InitContainers} {
				for _, ct := range cs {
					for _, cp := range ct.Ports {
						if cp.Name != "" && cp.ContainerPort > 0 && cp.ContainerPort < 65536 {
							k := namedKey{cp.Name, protoOf(cp.Protocol)}
							c.named[k] = append(c.named[k], podPort{p, uint16(cp.ContainerPort)})
						}
					}
				}
			}
		}
	}
	return c.named[namedKey{name, proto}]
}

func inRanges(rs []AddrRange, a netip.Addr) bool {
	for _, r := range rs {
		if r.Contains(a) {
			return true
		}
	}
	return false
}
