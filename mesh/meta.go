package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/hashicorp/memberlist"
)

// ProtoVersion is the major version of weft's gossip protocol: the node
// metadata layout, the message envelopes and the application state framing.
// Nodes refuse metadata of another major version. Compatible additions
// (new metadata fields) do not change it: decoders skip fields they do not
// know.
const ProtoVersion = 1

// MaxMetaSize is the largest encoded Meta that memberlist carries.
const MaxMetaSize = memberlist.MetaMaxSize

// ErrIncompatibleProto is returned (wrapped) by DecodeMeta for metadata
// written by a node that speaks another major protocol version.
var ErrIncompatibleProto = errors.New("incompatible weft protocol version")

// Meta is what a node tells every other node about itself through gossip.
// It travels as memberlist node metadata and must encode to at most
// MaxMetaSize bytes.
type Meta struct {
	// Proto is the protocol version of the node. Encode writes
	// ProtoVersion when it is zero; DecodeMeta always sets it.
	Proto uint8
	// Name is the node name; New and SetMeta fill it in when empty.
	Name string
	// PublicKey is the node's WireGuard public key.
	PublicKey [32]byte
	// Endpoint is the host:port peers dial for WireGuard.
	Endpoint string
	// TunnelAddr is the node's address on the overlay; the zero Addr
	// means the node has none yet.
	TunnelAddr netip.Addr
	// TunnelAddr6 is the node's IPv6 address on the overlay in a
	// dual-stack cluster (TunnelAddr is then the IPv4 one); the zero Addr
	// otherwise.
	TunnelAddr6 netip.Addr
	// NextPublicKey is the WireGuard public key the node will switch to
	// (a key rotation under way); zero when none is pending.
	NextPublicKey [32]byte
	// Secrets lists the fingerprints of the cluster secrets the node
	// holds, newest first, separated by commas (see SecretFingerprints):
	// peers agree on the gossip key and preshared key from it while a
	// secret is rotated. Empty without a secret.
	Secrets string
	// ProbeAddr is the node's probe address on the overlay: peers probe
	// their direct path to it (it stays on the direct path while the
	// node's ranges are relayed). The zero Addr: none (an older node).
	ProbeAddr netip.Addr
	// NATKind is what the node found out about its NAT from where its
	// peers see it: "", "none", "cone" or "symmetric".
	NATKind string
	// Reflexive is the public host:port at which peers see the node's
	// WireGuard port when it sits behind a cone NAT; peers behind
	// another NAT punch to it. Empty otherwise.
	Reflexive string
}

// SecretFingerprints splits Secrets into fingerprints, newest first.
func (m Meta) SecretFingerprints() []string {
	if m.Secrets == "" {
		return nil
	}
	return strings.Split(m.Secrets, ",")
}

// Encoding: one byte of ProtoVersion, then fields as (tag, length, value)
// with tag and length as unsigned varints. Empty fields are left out.
// Decoders skip unknown tags, so a later minor version can add fields.
const (
	tagName        = 1
	tagPublicKey   = 2
	tagEndpoint    = 3
	tagTunnelAddr  = 4
	_              = 5 // was the unreachable list, now in the daemon's relay messages; skipped
	tagProbeAddr   = 6
	tagNATKind     = 7
	tagReflexive   = 8
	tagNextKey     = 9
	tagSecrets     = 10
	tagTunnelAddr6 = 11
)

// Encode returns the wire form of m. It fails if m would not fit in
// MaxMetaSize bytes, if Proto is another major version, or if TunnelAddr
// carries an IPv6 zone.
func (m Meta) Encode() ([]byte, error) {
	if m.Proto != 0 && m.Proto != ProtoVersion {
		return nil, fmt.Errorf("encode meta: protocol version %d: %w (this build speaks %d)", m.Proto, ErrIncompatibleProto, ProtoVersion)
	}
	buf := make([]byte, 0, 96+len(m.Name)+len(m.Endpoint))
	buf = append(buf, ProtoVersion)
	if m.Name != "" {
		buf = appendField(buf, tagName, []byte(m.Name))
	}
	if m.PublicKey != ([32]byte{}) {
		buf = appendField(buf, tagPublicKey, m.PublicKey[:])
	}
	if m.Endpoint != "" {
		buf = appendField(buf, tagEndpoint, []byte(m.Endpoint))
	}
	if m.TunnelAddr.IsValid() {
		if m.TunnelAddr.Zone() != "" {
			return nil, fmt.Errorf("encode meta: tunnel address %s has a zone; use an address without one", m.TunnelAddr)
		}
		buf = appendField(buf, tagTunnelAddr, m.TunnelAddr.AsSlice())
	}
	if m.TunnelAddr6.IsValid() {
		if !m.TunnelAddr6.Is6() || m.TunnelAddr6.Is4In6() || m.TunnelAddr6.Zone() != "" {
			return nil, fmt.Errorf("encode meta: IPv6 tunnel address %s: want a plain IPv6 address", m.TunnelAddr6)
		}
		buf = appendField(buf, tagTunnelAddr6, m.TunnelAddr6.AsSlice())
	}
	if m.ProbeAddr.IsValid() {
		if m.ProbeAddr.Zone() != "" {
			return nil, fmt.Errorf("encode meta: probe address %s has a zone; use an address without one", m.ProbeAddr)
		}
		buf = appendField(buf, tagProbeAddr, m.ProbeAddr.AsSlice())
	}
	if m.NATKind != "" {
		buf = appendField(buf, tagNATKind, []byte(m.NATKind))
	}
	if m.Reflexive != "" {
		buf = appendField(buf, tagReflexive, []byte(m.Reflexive))
	}
	if m.NextPublicKey != ([32]byte{}) {
		buf = appendField(buf, tagNextKey, m.NextPublicKey[:])
	}
	if m.Secrets != "" {
		buf = appendField(buf, tagSecrets, []byte(m.Secrets))
	}
	if len(buf) > MaxMetaSize {
		return nil, fmt.Errorf("encode meta: %d bytes, more than the %d memberlist allows; shorten the node name or endpoint", len(buf), MaxMetaSize)
	}
	return buf, nil
}

func appendField(buf []byte, tag uint64, val []byte) []byte {
	buf = binary.AppendUvarint(buf, tag)
	buf = binary.AppendUvarint(buf, uint64(len(val)))
	return append(buf, val...)
}

// DecodeMeta parses metadata written by Encode, by this version or a later
// minor version of it. It never panics: malformed input gives an error.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, errors.New("decode meta: empty (the node runs no weft daemon or an old one)")
	}
	if len(b) > MaxMetaSize {
		return m, fmt.Errorf("decode meta: %d bytes, more than %d", len(b), MaxMetaSize)
	}
	if b[0] != ProtoVersion {
		return m, fmt.Errorf("decode meta: node speaks protocol %d, this build speaks %d: %w; run the same weft major version on every node", b[0], ProtoVersion, ErrIncompatibleProto)
	}
	m.Proto = b[0]
	rest := b[1:]
	var seen uint64 // bit set of known tags already decoded
	for len(rest) > 0 {
		tag, n := binary.Uvarint(rest)
		if n <= 0 {
			return Meta{}, errors.New("decode meta: bad field tag")
		}
		rest = rest[n:]
		size, n := binary.Uvarint(rest)
		if n <= 0 || size > uint64(len(rest)-n) {
			return Meta{}, fmt.Errorf("decode meta: field %d: bad length", tag)
		}
		val := rest[n : n+int(size)]
		rest = rest[n+int(size):]
		if tag < 64 {
			if seen&(1<<tag) != 0 {
				return Meta{}, fmt.Errorf("decode meta: field %d appears twice", tag)
			}
			seen |= 1 << tag
		}
		if err := m.setField(tag, val); err != nil {
			return Meta{}, fmt.Errorf("decode meta: %w", err)
		}
	}
	return m, nil
}

// setField stores one decoded field; unknown tags are ignored.
func (m *Meta) setField(tag uint64, val []byte) error {
	switch tag {
	case tagName:
		m.Name = string(val)
	case tagPublicKey:
		if len(val) != len(m.PublicKey) {
			return fmt.Errorf("public key of %d bytes, want %d", len(val), len(m.PublicKey))
		}
		copy(m.PublicKey[:], val)
	case tagNextKey:
		if len(val) != len(m.NextPublicKey) {
			return fmt.Errorf("next public key of %d bytes, want %d", len(val), len(m.NextPublicKey))
		}
		copy(m.NextPublicKey[:], val)
	case tagSecrets:
		m.Secrets = string(val)
	case tagEndpoint:
		m.Endpoint = string(val)
	case tagTunnelAddr:
		a, ok := netip.AddrFromSlice(val)
		if !ok {
			return fmt.Errorf("tunnel address of %d bytes, want 4 or 16", len(val))
		}
		m.TunnelAddr = a
	case tagTunnelAddr6:
		a, ok := netip.AddrFromSlice(val)
		if !ok || !a.Is6() {
			return fmt.Errorf("IPv6 tunnel address of %d bytes, want 16", len(val))
		}
		m.TunnelAddr6 = a
	case tagProbeAddr:
		a, ok := netip.AddrFromSlice(val)
		if !ok {
			return fmt.Errorf("probe address of %d bytes, want 4 or 16", len(val))
		}
		m.ProbeAddr = a
	case tagNATKind:
		m.NATKind = string(val)
	case tagReflexive:
		m.Reflexive = string(val)
	}
	return nil
}
