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
