// Package policytest holds a slow, obviously right NetworkPolicy and
// ClusterNetworkPolicy evaluator written from the networking.k8s.io/v1 and
// policy.networking.k8s.io/v1alpha2 API documentation. It shares no code
// with package policy's compiler: for one packet it walks through every
// policy and decides. The compiler's property tests and the end-to-end
// reachability matrix in tests/ both take their expected answers from it.
//
// It speaks only Kubernetes' vocabulary (k8s.io/api types, protocols as
// corev1.Protocol) and imports nothing of weft, so package policy's own
// tests can use it without an import cycle.
package policytest

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// Input is one node's view of the cluster.
type Input struct {
	// NodeName is the node that enforces: only its pods (spec.nodeName)
	// are checked, the egress of local sources and the ingress of local
	// destinations.
	NodeName   string
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the ClusterNetworkPolicies of the Admin and
	// Baseline tiers.
	ClusterPolicies []*cnp.ClusterNetworkPolicy
	// Nodes are the cluster's nodes, for egress peers that select nodes.
	Nodes []*corev1.Node
	// NodeAddrs are the node's own addresses: traffic from them to local
	// pods always passes (kubelet probes).
	NodeAddrs []netip.Addr
}

// Packet is the first packet of a connection.
type Packet struct {
	Src, Dst netip.Addr
	Proto    corev1.Protocol // TCP, UDP or SCTP; anything else matches no port entry
	Port     uint16          // destination port
}

// Allows reports whether pkt may pass the node in.NodeName.
func Allows(in Input, pkt Packet) bool {
	src, dst := podByIP(in.Pods, pkt.Src), podByIP(in.Pods, pkt.Dst)
	if src != nil && src == dst && src.Spec.NodeName == in.NodeName {
		return true // within one pod: the packet never leaves it
	}
	if src != nil && src.Spec.NodeName == in.NodeName {
		// Egress of the source: named ports resolve on the destination pod.
		if !dirDecides(in, src, true, pkt.Dst, dst, dst, pkt) {
			return false
		}
	}
	if dst != nil && dst.Spec.NodeName == in.NodeName {
		if slices.Contains(in.NodeAddrs, pkt.Src) {
			return true // from this node: kubelet probes
		}
		if !dirDecides(in, dst, false, pkt.Src, src, dst, pkt) {
			return false
		}
	}
	return true
}

// Reference reports whether pkt from one pod to another passes the whole
// cluster: the source's node must let it out (egress) and the destination's
// node must let it in (ingress). A packet from a pod to itself always
// passes.
func Reference(pods []*corev1.Pod, namespaces []*corev1.Namespace, policies []*networkingv1.NetworkPolicy, pkt Packet) bool {
	return ReferenceInput(Input{Pods: pods, Namespaces: namespaces, Policies: policies}, pkt)
}

// ReferenceInput is Reference with every kind of object in: NetworkPolicies,
// ClusterNetworkPolicies and Nodes (in.NodeName and in.NodeAddrs are
// ignored).
func ReferenceInput(in Input, pkt Packet) bool {
	pods := in.Pods
	in.NodeAddrs = nil
	var nodes []string
	for _, p := range []*corev1.Pod{podByIP(pods, pkt.Src), podByIP(pods, pkt.Dst)} {
		if p != nil && !slices.Contains(nodes, p.Spec.NodeName) {
			nodes = append(nodes, p.Spec.NodeName)
		}
	}
	for _, n := range nodes {
		in.NodeName = n
		if !Allows(in, pkt) {
			return false
		}
	}
	return true
}

// podByIP finds the pod that owns an address: only running pods with an
// IP that are not on the host network count.
func podByIP(pods []*corev1.Pod, a netip.Addr) *corev1.Pod {
	for _, p := range pods {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if ip.IP == a.String() {
				return p
			}
		}
		if p.Status.PodIP == a.String() {
			return p
		}
	}
	return nil
}

// npDecides is the NetworkPolicy tier: a pod selected by no policy for
// this direction is not isolated (selected false); otherwise some rule of
// some selecting policy must allow.
func npDecides(in Input, pod *corev1.Pod, egress bool, peerAddr netip.Addr, peerPod, dstPod *corev1.Pod, pkt Packet) (selected, allowed bool) {
	dir := networkingv1.PolicyTypeIngress
	if egress {
		dir = networkingv1.PolicyTypeEgress
	}
	for _, pol := range in.Policies {
		if pol.Namespace != pod.Namespace || !SelectorMatches(&pol.Spec.PodSelector, pod.Labels) {
			continue
		}
		if !HasType(pol, dir) {
			continue
		}
		selected = true
		if dir == networkingv1.PolicyTypeIngress {
			for _, r := range pol.Spec.Ingress {
				if peersMatch(in, pol, r.From, peerAddr, peerPod) && portsMatch(r.Ports, pkt, dstPod) {
					return true, true
				}
			}
		} else {
			for _, r := range pol.Spec.Egress {
				if peersMatch(in, pol, r.To, peerAddr, peerPod) && portsMatch(r.Ports, pkt, dstPod) {
					return true, true
				}
			}
		}
	}
	return selected, false
}

// HasType reports whether pol affects the direction dir. "If this field is
// not specified, it will default based on the existence of ingress or
// egress rules; policies that contain an egress section are assumed to
// affect egress, and all policies (whether or not they contain an ingress
// section) are assumed to affect ingress."
func HasType(pol *networkingv1.NetworkPolicy, dir networkingv1.PolicyType) bool {
	if len(pol.Spec.PolicyTypes) == 0 {
		if dir == networkingv1.PolicyTypeIngress {
			return true
		}
		return len(pol.Spec.Egress) > 0
	}
	return slices.Contains(pol.Spec.PolicyTypes, dir)
}

// peersMatch: an empty list matches all sources/destinations; otherwise
// any one peer must match.
func peersMatch(in Input, pol *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, addr netip.Addr, pod *corev1.Pod) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			if !cidrContains(p.IPBlock.CIDR, addr) {
				continue
			}
			excepted := false
			for _, e := range p.IPBlock.Except {
				if cidrContains(e, addr) {
					excepted = true
				}
			}
			if !excepted {
				return true
			}
			continue
		}
		if pod == nil {
			continue
		}
		// namespaceSelector nil: the policy's own namespace.
		if p.NamespaceSelector == nil {
			if pod.Namespace != pol.Namespace {
				continue
			}
		} else if !SelectorMatches(p.NamespaceSelector, namespaceLabels(in, pod.Namespace)) {
			continue
		}
		// podSelector nil: every pod of the selected namespaces.
		if p.PodSelector != nil && !SelectorMatches(p.PodSelector, pod.Labels) {
			continue
		}
		return true
	}
	return false
}

// cidrContains: an IPv4-mapped IPv6 CIDR stands for its IPv4 range.
func cidrContains(cidr string, a netip.Addr) bool {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return false // the API refuses such a policy
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Contains(a)
}

// namespaceLabels are a namespace's labels with the name label the API
// server sets on every namespace.
func namespaceLabels(in Input, name string) map[string]string {
	l := map[string]string{"kubernetes.io/metadata.name": name}
	for _, ns := range in.Namespaces {
		if ns.Name == name {
			for k, v := range ns.Labels {
				l[k] = v
			}
		}
	}
	return l
}

// portsMatch: an empty list matches all ports and protocols; otherwise
// any one entry must match. Protocol defaults to TCP; a named port is looked
// up on the destination pod.
func portsMatch(ports []networkingv1.NetworkPolicyPort, pkt Packet, dstPod *corev1.Pod) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if proto != pkt.Proto {
			continue
		}
		if p.Port == nil {
			return true
		}
		if p.Port.Type == intstr.Int {
			end := p.Port.IntVal
			if p.EndPort != nil {
				end = *p.EndPort
			}
			if int32(pkt.Port) >= p.Port.IntVal && int32(pkt.Port) <= end {
				return true
			}
			continue
		}
		if dstPod == nil {
			continue
		}
		for _, c := range append(slices.Clone(dstPod.Spec.Containers), dstPod.Spec.InitContainers...) {
			for _, cp := range c.Ports {
				cproto := cp.Protocol
				if cproto == "" {
					cproto = corev1.ProtocolTCP
				}
				if cp.Name == p.Port.StrVal && cproto == proto && cp.ContainerPort == int32(pkt.Port) {
					return true
				}
			}
		}
	}
	return false
}

// SelectorMatches reports whether labels l satisfy s: "The requirements
// are ANDed." An empty selector matches everything; an unknown operator
// matches nothing.
func SelectorMatches(s *metav1.LabelSelector, l map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := l[k]; !ok || got != v {
			return false
		}
	}
	for _, e := range s.MatchExpressions {
		v, ok := l[e.Key]
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			if !ok || !slices.Contains(e.Values, v) {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			if ok && slices.Contains(e.Values, v) {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !ok {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}
