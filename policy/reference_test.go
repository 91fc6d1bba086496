package policy

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/weftnet/weft/policy/policytest"
)

// refAllows asks the slow reference evaluator of package policytest,
// written from the API documentation and sharing no code with the
// compiler, whether pkt may pass this node.
func refAllows(in Input, pkt Packet) bool {
	return policytest.Allows(policytest.Input{
		NodeName:   in.NodeName,
		Pods:       in.Pods,
		Namespaces: in.Namespaces,
		Policies:   in.Policies,
		NodeAddrs:  in.NodeAddrs,

		ClusterPolicies: in.ClusterPolicies,
		Nodes:           in.Nodes,
	}, policytest.Packet{Src: pkt.Src, Dst: pkt.Dst, Proto: refProtocol(pkt.Proto), Port: pkt.Port})
}

// refProtocol names an IP protocol number as the API does; others get a
// name no port entry has.
func refProtocol(p Proto) corev1.Protocol {
	switch p {
	case ProtoTCP:
		return corev1.ProtocolTCP
	case ProtoUDP:
		return corev1.ProtocolUDP
	case ProtoSCTP:
		return corev1.ProtocolSCTP
	}
	return corev1.Protocol(p.String())
}
