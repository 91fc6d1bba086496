package policy

import (
	"errors"
	"fmt"
	"net/netip"
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
