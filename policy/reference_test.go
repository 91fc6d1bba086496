package policy

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// This file is a slow, obviously right evaluator written from the
// NetworkPolicy API documentation. It shares no code with the compiler: for
// one packet it walks through every policy and decides.

// refAllows reports whether pkt may pass this node.
func refAllows(in Input, pkt Packet) bool {
	src, dst := refPodByIP(in, pkt.Src), refPodByIP(in, pkt.Dst)
	if src != nil && src == dst && src.Spec.NodeName == in.NodeName {
		return true // within one pod: the packet never leaves it
	}
	if src != nil && src.Spec.NodeName == in.NodeName {
		// Egress of the source: named ports resolve on the destination pod.
		if !refDirectionAllows(in, src, networkingv1.PolicyTypeEgress, pkt.Dst, dst, dst, pkt) {
			return false
		}
	}
	if dst != nil && dst.Spec.NodeName == in.NodeName {
		if slices.Contains(in.NodeAddrs, pkt.Src) {
			return true // from this node: kubelet probes
		}
		if !refDirectionAllows(in, dst, networkingv1.PolicyTypeIngress, pkt.Src, src, dst, pkt) {
			return false
		}
	}
	return true
}

// refPodByIP finds the pod that owns an address: only running pods with an
// IP that are not on the host network count.
func refPodByIP(in Input, a netip.Addr) *corev1.Pod {
	for _, p := range in.Pods {
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

// refDirectionAllows: a pod selected by no policy for this direction is not
// isolated; otherwise some rule of some selecting policy must allow.
func refDirectionAllows(in Input, pod *corev1.Pod, dir networkingv1.PolicyType, peerAddr netip.Addr, peerPod, dstPod *corev1.Pod, pkt Packet) bool {
	selected := false
	for _, pol := range in.Policies {
		if pol.Namespace != pod.Namespace || !refSelectorMatches(&pol.Spec.PodSelector, pod.Labels) {
			continue
		}
		if !refHasType(pol, dir) {
			continue
		}
		selected = true
		if dir == networkingv1.PolicyTypeIngress {
			for _, r := range pol.Spec.Ingress {
				if refPeersMatch(in, pol, r.From, peerAddr, peerPod) && refPortsMatch(r.Ports, pkt, dstPod) {
					return true
				}
			}
		} else {
			for _, r := range pol.Spec.Egress {
				if refPeersMatch(in, pol, r.To, peerAddr, peerPod) && refPortsMatch(r.Ports, pkt, dstPod) {
					return true
				}
			}
		}
	}
	return !selected
}

// refHasType: "If this field is not specified, it will default based on the
// existence of ingress or egress rules; policies that contain an egress
// section are assumed to affect egress, and all policies (whether or not they
// contain an ingress section) are assumed to affect ingress."
func refHasType(pol *networkingv1.NetworkPolicy, dir networkingv1.PolicyType) bool {
	if len(pol.Spec.PolicyTypes) == 0 {
		if dir == networkingv1.PolicyTypeIngress {
			return true
		}
		return len(pol.Spec.Egress) > 0
	}
	return slices.Contains(pol.Spec.PolicyTypes, dir)
}

// refPeersMatch: an empty list matches all sources/destinations; otherwise
// any one peer must match.
func refPeersMatch(in Input, pol *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, addr netip.Addr, pod *corev1.Pod) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			if !refCIDRContains(p.IPBlock.CIDR, addr) {
				continue
			}
			excepted := false
			for _, e := range p.IPBlock.Except {
				if refCIDRContains(e, addr) {
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
		} else if !refSelectorMatches(p.NamespaceSelector, refNamespaceLabels(in, pod.Namespace)) {
			continue
		}
		// podSelector nil: every pod of the selected namespaces.
		if p.PodSelector != nil && !refSelectorMatches(p.PodSelector, pod.Labels) {
			continue
		}
		return true
	}
	return false
}

// refCIDRContains: an IPv4-mapped IPv6 CIDR stands for its IPv4 range.
func refCIDRContains(cidr string, a netip.Addr) bool {
	p := netip.MustParsePrefix(cidr)
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Contains(a)
}

func refNamespaceLabels(in Input, name string) map[string]string {
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

// refPortsMatch: an empty list matches all ports and protocols; otherwise
// any one entry must match. Protocol defaults to TCP; a named port is looked
// up on the destination pod.
func refPortsMatch(ports []networkingv1.NetworkPolicyPort, pkt Packet, dstPod *corev1.Pod) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if refProto(proto) != pkt.Proto {
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

func refProto(p corev1.Protocol) Proto {
	switch p {
	case corev1.ProtocolTCP:
		return ProtoTCP
	case corev1.ProtocolUDP:
		return ProtoUDP
	case corev1.ProtocolSCTP:
		return ProtoSCTP
	}
	return 255
}

// refSelectorMatches: "The requirements are ANDed." An empty selector
// matches everything.
func refSelectorMatches(s *metav1.LabelSelector, l map[string]string) bool {
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
