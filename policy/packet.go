package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ParsePacket reads the addresses, protocol and destination port of an IPv4
// or IPv6 packet, as NFLOG hands over dropped packets, so that the drop can
// be explained with RuleSet.Allows. The port is 0 for protocols without
// ports and for fragments after the first.
func ParsePacket(b []byte) (Packet, error) {
	if len(b) < 1 {
		return Packet{}, errors.New("empty packet")
	}
	switch b[0] >> 4 {
	case 4:
		return parseIPv4(b)
	case 6:
		return parseIPv6(b)
	}
	return Packet{}, fmt.Errorf("IP version %d is neither 4 nor 6", b[0]>>4)
}

func parseIPv4(b []byte) (Packet, error) {
	if len(b) < 20 {
		return Packet{}, errors.New("IPv4 header truncated")
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 || len(b) < ihl {
		return Packet{}, fmt.Errorf("IPv4 header length %d is invalid", ihl)
	}
	p := Packet{
		Src:   netip.AddrFrom4([4]byte(b[12:16])),
		Dst:   netip.AddrFrom4([4]byte(b[16:20])),
		Proto: Proto(b[9]),
	}
	fragOffset := (uint16(b[6])&0x1f)<<8 | uint16(b[7])
	if fragOffset == 0 {
		p.Port = transportPort(p.Proto, b[ihl:])
	}
	return p, nil
}

// IPv6 extension headers that ParsePacket skips.
const (
	ipv6HopByHop = 0
	ipv6Routing  = 43
	ipv6Fragment = 44
	ipv6DestOpts = 60
)

func parseIPv6(b []byte) (Packet, error) {
	if len(b) < 40 {
		return Packet{}, errors.New("IPv6 header truncated")
	}
	p := Packet{Src: netip.AddrFrom16([16]byte(b[8:24])), Dst: netip.AddrFrom16([16]byte(b[24:40]))}
	next, rest := b[6], b[40:]
	first := true
headers:
	for {
		switch next {
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			if len(rest) < 8 || len(rest) < 8+int(rest[1])*8 {
				return Packet{}, errors.New("IPv6 extension header truncated")
			}
			next, rest = rest[0], rest[8+int(rest[1])*8:]
		case ipv6Fragment:
			if len(rest) < 8 {
				return Packet{}, errors.New("IPv6 fragment header truncated")
			}
			first = (uint16(rest[2])<<8|uint16(rest[3]))>>3 == 0
			next, rest = rest[0], rest[8:]
		default:
			break headers
		}
	}
	p.Proto = Proto(next)
	if first {
		p.Port = transportPort(p.Proto, rest)
	}
	return p, nil
}

// transportPort returns the destination port of TCP, UDP and SCTP, which
// all keep it in bytes 2-3.
func transportPort(proto Proto, b []byte) uint16 {
	if (proto == ProtoTCP || proto == ProtoUDP || proto == ProtoSCTP) && len(b) >= 4 {
		return uint16(b[2])<<8 | uint16(b[3])
	}
	return 0
}

// ParseLogPrefix reads the NFLOG prefix of a drop chain ("weft drop ingress
// ns/name: "): the direction and the local pod (namespace/name).
func ParseLogPrefix(prefix string) (dir Direction, pod string, ok bool) {
	rest, ok := strings.CutPrefix(prefix, logPrefix)
	if !ok {
		return 0, "", false
	}
	word, pod, ok := strings.Cut(rest, " ")
	if !ok {
		return 0, "", false
	}
	switch word {
	case "ingress":
		dir = Ingress
	case "egress":
		dir = Egress
	default:
		return 0, "", false
	}
	pod = strings.TrimSuffix(strings.TrimSpace(pod), ":")
	return dir, pod, pod != ""
}

// logPrefix starts the NFLOG prefix of every drop chain.
const logPrefix = "weft drop "

// LogPrefix is the NFLOG prefix of the drops of a pod (namespace/name) in a
// direction, at most 127 bytes.
func LogPrefix(dir Direction, pod string) string {
	p := fmt.Sprintf("%s%s %s: ", logPrefix, dir, pod)
	if len(p) > 127 {
		p = p[:127]
	}
	return p
}

// ParseProto reads a protocol as weft prints it: a name (any, icmp, tcp,
// udp, icmpv6, sctp; in any case), proto-N, or a number from 0 to 255.
func ParseProto(s string) (Proto, error) {
	low := strings.ToLower(s)
	for p, n := range protoNames {
		if n == low {
			return p, nil
		}
	}
	num := strings.TrimPrefix(low, "proto-")
	if n, err := strconv.ParseUint(num, 10, 8); err == nil {
		return Proto(n), nil
	}
	return 0, fmt.Errorf("protocol %q: say tcp, udp, sctp, icmp, icmpv6 or a number from 0 to 255", s)
}

// ParsePortProto reads the PORT/PROTO of `weft why`: "80/tcp", "53/udp",
// "80" (TCP, the protocol NetworkPolicy defaults to), or a protocol
// without ports ("icmp", "icmpv6", a number). TCP, UDP and SCTP need a
// port from 1 to 65535; the others take none.
func ParsePortProto(s string) (Proto, uint16, error) {
	portText, protoText, slash := strings.Cut(s, "/")
	if !slash {
		if _, err := strconv.ParseUint(s, 10, 16); err == nil {
			portText, protoText = s, "tcp"
		} else {
			portText, protoText = "", s
		}
	}
	proto, err := ParseProto(protoText)
	if err != nil {
		return 0, 0, fmt.Errorf("%q is not PORT/PROTO: %w", s, err)
	}
	if proto == ProtoAny {
		return 0, 0, fmt.Errorf("%q is not PORT/PROTO: name one protocol, e.g. 80/tcp or icmp", s)
	}
	if !proto.HasPorts() {
		if portText != "" {
			return 0, 0, fmt.Errorf("%q is not PORT/PROTO: %s has no ports; say just %s", s, proto, proto)
		}
		return proto, 0, nil
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return 0, 0, fmt.Errorf("%q is not PORT/PROTO: %s needs a port from 1 to 65535, e.g. 80/%s", s, proto, proto)
	}
	return proto, uint16(port), nil
}
