package policytest

import (
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// This file adds the tiers of ClusterNetworkPolicy (policy.networking.k8s.io
// v1alpha2), from its type documentation: "Policy tiers are evaluated in the
// following order: Admin tier, NetworkPolicy tier, Baseline tier"; within a
// tier "policies with lower priority values have higher precedence", and
// within a policy "a rule that appears at the top ... would take the highest
// precedence". Accept and Deny are final for the direction; Pass "skips all
// further ClusterNetworkPolicy rules in the current tier ... and passes
// evaluation to the next tier". Policies of equal priority are ordered by
// name, which the API leaves to the implementation.

// action is what a tier decided for one direction.
type action int

const (
	noMatch action = iota
	accept
	deny
	pass
)

// dirDecides runs the three tiers for one direction of pod: it reports
// whether the direction lets the packet pass.
func dirDecides(in Input, pod *corev1.Pod, egress bool, peerAddr netip.Addr, peerPod, dstPod *corev1.Pod, pkt Packet) bool {
	switch tierAction(in, cnp.AdminTier, pod, egress, peerAddr, peerPod, dstPod, pkt) {
	case accept:
		return true
	case deny:
		return false
	}
	if selected, allowed := npDecides(in, pod, egress, peerAddr, peerPod, dstPod, pkt); selected {
		return allowed
	}
	return tierAction(in, cnp.BaselineTier, pod, egress, peerAddr, peerPod, dstPod, pkt) != deny
}

// tierAction is the action of the first matching rule of the tier's
// policies that select pod, in precedence order.
func tierAction(in Input, tier cnp.Tier, pod *corev1.Pod, egress bool, peerAddr netip.Addr, peerPod, dstPod *corev1.Pod, pkt Packet) action {
	var pols []*cnp.ClusterNetworkPolicy
	for _, p := range in.ClusterPolicies {
		if p != nil && p.Spec.Tier == tier && SubjectMatches(in, p.Spec.Subject, pod) {
			pols = append(pols, p)
		}
	}
	slices.SortFunc(pols, func(a, b *cnp.ClusterNetworkPolicy) int {
		if a.Spec.Priority != b.Spec.Priority {
			return int(a.Spec.Priority - b.Spec.Priority)
		}
		return strings.Compare(a.Name, b.Name)
	})
	for _, p := range pols {
		if egress {
			for _, r := range p.Spec.Egress {
				if egressPeersMatch(in, r.Action, r.To, peerAddr, peerPod) && protocolsMatch(r.Protocols, pkt, dstPod) {
					if a := actionOf(r.Action); a != noMatch {
						return a
					}
				}
			}
			continue
		}
		for _, r := range p.Spec.Ingress {
			if ingressPeersMatch(in, r.Action, r.From, peerPod) && protocolsMatch(r.Protocols, pkt, dstPod) {
				if a := actionOf(r.Action); a != noMatch {
					return a
				}
			}
		}
	}
	return noMatch
}

// actionOf maps the API's action; an unknown one makes the rule match
// nothing.
func actionOf(a cnp.ClusterNetworkPolicyRuleAction) action {
	switch a {
	case cnp.ClusterNetworkPolicyRuleActionAccept:
		return accept
	case cnp.ClusterNetworkPolicyRuleActionDeny:
		return deny
	case cnp.ClusterNetworkPolicyRuleActionPass:
		return pass
	}
	return noMatch
}

// SubjectMatches reports whether a policy's subject selects pod: by its
// namespace's labels, or by those and the pod's labels. A subject with
// neither field selects nothing.
func SubjectMatches(in Input, s cnp.ClusterNetworkPolicySubject, pod *corev1.Pod) bool {
	switch {
	case s.Namespaces != nil:
		return SelectorMatches(s.Namespaces, namespaceLabels(in, pod.Namespace))
	case s.Pods != nil:
		return namespacedPodMatches(in, s.Pods, pod)
	}
	return false
}

func namespacedPodMatches(in Input, np *cnp.NamespacedPod, pod *corev1.Pod) bool {
	return SelectorMatches(&np.NamespaceSelector, namespaceLabels(in, pod.Namespace)) &&
		SelectorMatches(&np.PodSelector, pod.Labels)
}

// failClosed is what a peer with no known field matches: "For Accept rules
// ... treat the rule as matching no traffic. For Deny and Pass rules ...
// treat the rule as a 'Deny all' rule".
func failClosed(a cnp.ClusterNetworkPolicyRuleAction) bool {
	return a == cnp.ClusterNetworkPolicyRuleActionDeny || a == cnp.ClusterNetworkPolicyRuleActionPass
}

// ingressPeersMatch: any one peer must match the source, which must be a
// pod (ingress peers are namespaces and pods only).
func ingressPeersMatch(in Input, a cnp.ClusterNetworkPolicyRuleAction, peers []cnp.ClusterNetworkPolicyIngressPeer, src *corev1.Pod) bool {
	for _, p := range peers {
		if p.Namespaces == nil && p.Pods == nil {
			if failClosed(a) {
				return true
			}
			continue
		}
		if src == nil {
			continue
		}
		if p.Namespaces != nil && SelectorMatches(p.Namespaces, namespaceLabels(in, src.Namespace)) {
			return true
		}
		if p.Pods != nil && namespacedPodMatches(in, p.Pods, src) {
			return true
		}
	}
	return false
}

// egressPeersMatch: any one peer must match the destination: pods by
// namespace and pod labels, nodes by their labels and addresses, networks
// by CIDR (pods inside included). Domain names match nothing here.
func egressPeersMatch(in Input, a cnp.ClusterNetworkPolicyRuleAction, peers []cnp.ClusterNetworkPolicyEgressPeer, dstAddr netip.Addr, dst *corev1.Pod) bool {
	for _, p := range peers {
		if p.Namespaces == nil && p.Pods == nil && p.Nodes == nil && len(p.Networks) == 0 && len(p.DomainNames) == 0 {
			if failClosed(a) {
				return true
			}
			continue
		}
		if dst != nil && p.Namespaces != nil && SelectorMatches(p.Namespaces, namespaceLabels(in, dst.Namespace)) {
			return true
		}
		if dst != nil && p.Pods != nil && namespacedPodMatches(in, p.Pods, dst) {
			return true
		}
		if p.Nodes != nil && nodeAddrMatches(in, p.Nodes, dstAddr) {
			return true
		}
		for _, n := range p.Networks {
			if cidrContains(string(n), dstAddr) {
				return true
			}
		}
	}
	return false
}

func nodeAddrMatches(in Input, sel *metav1.LabelSelector, a netip.Addr) bool {
	for _, n := range in.Nodes {
		if n == nil || !SelectorMatches(sel, n.Labels) {
			continue
		}
		for _, na := range n.Status.Addresses {
			if na.Address == a.String() {
				return true
			}
		}
	}
	return false
}

// protocolsMatch: an empty list matches every protocol; otherwise one
// entry must match: a protocol with no destination port, or with a port
// number or range, or a named port of the destination pod.
func protocolsMatch(ps []cnp.ClusterNetworkPolicyProtocol, pkt Packet, dstPod *corev1.Pod) bool {
	if len(ps) == 0 {
		return true
	}
	for _, p := range ps {
		switch {
		case p.TCP != nil:
			if pkt.Proto == corev1.ProtocolTCP && portMatches(p.TCP.DestinationPort, pkt.Port) {
				return true
			}
		case p.UDP != nil:
			if pkt.Proto == corev1.ProtocolUDP && portMatches(p.UDP.DestinationPort, pkt.Port) {
				return true
			}
		case p.SCTP != nil:
			if pkt.Proto == corev1.ProtocolSCTP && portMatches(p.SCTP.DestinationPort, pkt.Port) {
				return true
			}
		case p.DestinationNamedPort != "":
			if dstPod != nil && hasNamedPort(dstPod, p.DestinationNamedPort, pkt) {
				return true
			}
		}
	}
	return false
}

// portMatches: no port matches every port; a range is inclusive; a port
// with neither number nor range matches nothing.
func portMatches(p *cnp.Port, port uint16) bool {
	if p == nil {
		return true
	}
	if p.Range != nil {
		return int32(port) >= p.Range.Start && int32(port) <= p.Range.End
	}
	return p.Number != 0 && p.Number == int32(port)
}

func hasNamedPort(pod *corev1.Pod, name string, pkt Packet) bool {
	for _, c := range append(slices.Clone(pod.Spec.Containers), pod.Spec.InitContainers...) {
		for _, cp := range c.Ports {
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			if cp.Name == name && proto == pkt.Proto && cp.ContainerPort == int32(pkt.Port) {
				return true
			}
		}
	}
	return false
}
