package daemon

import (
	"fmt"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/policy"
)

// WhyAnswer is `weft why --json`: the verdict, and the node whose daemon
// computed it from the cluster-wide objects it watches. Each direction
// names the node whose rules judged it (egress: the source pod's node,
// ingress: the destination pod's).
type WhyAnswer struct {
	AnsweredBy string `json:"answeredBy"`
	policy.Verdict
}

// whyPacket turns a request into the packet to judge: the addresses of
// its ends, and the protocol and port, checked; no protocol means ICMP of
// the addresses' family.
func whyPacket(e *policy.Explainer, req api.WhyRequest) (policy.Packet, error) {
	src, dst, err := e.Resolve(req.Src, req.Dst)
	if err != nil {
		return policy.Packet{}, err
	}
	pkt := policy.Packet{Src: src, Dst: dst, Proto: policy.ProtoICMP, Port: req.Port}
	if req.Proto != "" {
		if pkt.Proto, err = policy.ParseProto(req.Proto); err != nil {
			return policy.Packet{}, err
		}
	}
	if pkt.Proto == policy.ProtoAny {
		return policy.Packet{}, fmt.Errorf("protocol %q: name one protocol, e.g. tcp", req.Proto)
	}
	if src.Is6() && pkt.Proto == policy.ProtoICMP {
		pkt.Proto = policy.ProtoICMPv6
	}
	if src.Is4() && pkt.Proto == policy.ProtoICMPv6 {
		pkt.Proto = policy.ProtoICMP
	}
	switch {
	case pkt.Proto.HasPorts() && pkt.Port == 0:
		return policy.Packet{}, fmt.Errorf("%s needs a destination port from 1 to 65535", pkt.Proto)
	case !pkt.Proto.HasPorts() && pkt.Port != 0:
		return policy.Packet{}, fmt.Errorf("%s has no ports; give no port", pkt.Proto)
	}
	return pkt, nil
}
