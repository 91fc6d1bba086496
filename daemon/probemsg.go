package daemon

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Probe messages: magic, type, 8-byte nonce; an answer adds the endpoint
// (host:port) at which the answering node's WireGuard sees the prober.
var probeMagic = [2]byte{'W', 'P'}

const (
	probeRequest = 1
	probeAnswer  = 2
	probeHeader  = 2 + 1 + 8
)

// probeMsg is a probe message read from the socket.
type probeMsg struct {
	from     netip.AddrPort
	typ      byte
	nonce    uint64
	endpoint string
	at       time.Time // when it was read
}

// encodeProbe is the wire form of a probe message: "WP", its type, the
// nonce, and for an answer the endpoint at which the answering node sees
// the prober (up to 255 bytes, cut beyond).
func encodeProbe(typ byte, nonce uint64, endpoint string) []byte {
	if len(endpoint) > 255 {
		endpoint = endpoint[:255]
	}
	b := make([]byte, 0, probeHeader+len(endpoint))
	b = append(b, probeMagic[0], probeMagic[1], typ)
	b = binary.BigEndian.AppendUint64(b, nonce)
	return append(b, endpoint...)
}

// parseProbe reads a probe message; ok is false for anything else.
func parseProbe(b []byte) (probeMsg, bool) {
	if len(b) < probeHeader || len(b) > probeHeader+255 || b[0] != probeMagic[0] || b[1] != probeMagic[1] {
		return probeMsg{}, false
	}
	m := probeMsg{typ: b[2], nonce: binary.BigEndian.Uint64(b[3:probeHeader])}
	switch m.typ {
	case probeRequest:
		return m, len(b) == probeHeader
	case probeAnswer:
		m.endpoint = string(b[probeHeader:])
		return m, true
	}
	return probeMsg{}, false
}

// probeSignal carries a relay signalling message (relaymsg.go) on the
// probe socket, through the tunnel: the way to a peer whose direct path
// works even when gossip cannot reach it (a node behind NAT receives
// gossip only through the push/pulls it starts). Its wire form: "WP", the
// type, the sender's name (uvarint length and bytes), the message.
const probeSignal = 3

// maxProbeSignal bounds a signalling frame on the probe socket.
const maxProbeSignal = 60 << 10

func encodeSignal(from string, msg []byte) []byte {
	b := make([]byte, 0, 3+binary.MaxVarintLen64+len(from)+len(msg))
	b = append(b, probeMagic[0], probeMagic[1], probeSignal)
	b = appendString(b, from)
	return append(b, msg...)
}

// parseSignal reads a signalling frame; ok is false for anything else.
// msg aliases b.
func parseSignal(b []byte) (from string, msg []byte, ok bool) {
	if len(b) < 3 || len(b) > maxProbeSignal || b[0] != probeMagic[0] || b[1] != probeMagic[1] || b[2] != probeSignal {
		return "", nil, false
	}
	from, msg, err := readString(b[3:])
	return from, msg, err == nil && from != ""
}
