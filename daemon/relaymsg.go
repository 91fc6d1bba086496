package daemon

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Relay signalling messages ride on the mesh's gossip (mesh.Broadcast),
// addressed to one node: gossip reaches a node even when the sender's own
// underlay path to it is cut, which is exactly when these messages matter.
// Every node but the addressee drops them after reading the header.
//
// Wire form, after the allocator's one-byte tag (tagRelaySignal):
//
//	version (1) | kind (1) | id (8) | epoch (8) | to | a | b | n | n names | mac (16)
//
// where to, a, b and each name are a uvarint length and the bytes. The MAC
// is HMAC-SHA256, cut to 16 bytes, keyed by the static X25519 secret of the
// sender's and the addressee's WireGuard keys, over the sender's name and
// everything before the MAC. memberlist hands user messages over without
// their sender, and gossip is relayed by every node, so the name in the
// mesh envelope alone is self-declared: the MAC proves that the message
// comes from the holder of the key that the member of that name announces
// (and, with Kubernetes, that its Node carries).
const relayMsgVersion = 1

// Kinds of relay signalling messages.
const (
	kindAck      byte = 1 // Epoch is the id of the message acknowledged
	kindReport   byte = 2 // Epoch is the report's version; Names the peers the sender cannot reach directly
	kindPropose  byte = 3 // the lower end asks the addressee to relay the pair (A, B) from Epoch on
	kindConfirm  byte = 4 // the sender relays the pair (A, B) from Epoch on; sent to both ends
	kindRefuse   byte = 5 // the sender does not relay the pair (A, B) of the proposal Epoch
	kindWithdraw byte = 6 // the sender stops relaying the pair (A, B) it confirmed at Epoch
)

const (
	relayMACSize = 16
	// maxRelayNames bounds a report: more names than any cluster weft
	// supports, few enough that a forged length cannot make a reader
	// allocate much.
	maxRelayNames = 1 << 14
)

// relayMsg is one relay signalling message. Messages are idempotent: a
// report is the whole list with a version, a proposal, confirmation,
// refusal or withdrawal names its pair and epoch, so a duplicate changes
// nothing.
type relayMsg struct {
	Kind  byte
	ID    uint64 // the sender's id of this message, which the ack echoes
	Epoch uint64
	To    string
	A, B  string // the pair, A < B
	Names []string
}

func kindName(k byte) string {
	switch k {
	case kindAck:
		return "ack"
	case kindReport:
		return "report"
	case kindPropose:
		return "propose"
	case kindConfirm:
		return "confirm"
	case kindRefuse:
		return "refuse"
	case kindWithdraw:
		return "withdraw"
	}
	return fmt.Sprintf("kind-%d", k)
}

// encodeRelayMsg returns the wire form of m from the node from, signed
// with key (relayMACKey of the pair from, m.To).
func encodeRelayMsg(m relayMsg, from string, key [32]byte) []byte {
	b := make([]byte, 0, 64+len(m.To)+len(m.A)+len(m.B)+16*len(m.Names))
	b = append(b, relayMsgVersion, m.Kind)
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	for _, s := range []string{m.To, m.A, m.B} {
		b = appendString(b, s)
	}
	b = binary.AppendUvarint(b, uint64(len(m.Names)))
	for _, s := range m.Names {
		b = appendString(b, s)
	}
	return append(b, relayMAC(key, from, b)...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// relayMsgTo reads only the addressee of a message, so that the nodes it
// is not for drop it without checking its MAC.
func relayMsgTo(b []byte) (string, error) {
	if len(b) < 18 || b[0] != relayMsgVersion {
		return "", errors.New("relay message: short or of an unknown version (a newer weft?)")
	}
	to, _, err := readString(b[18:])
	return to, err
}

// decodeRelayMsg parses and authenticates a message from the node from
// with key (relayMACKey of the pair).
func decodeRelayMsg(b []byte, from string, key [32]byte) (relayMsg, error) {
	var m relayMsg
	if len(b) < 18+relayMACSize || b[0] != relayMsgVersion {
		return m, errors.New("relay message: short or of an unknown version (a newer weft?)")
	}
	body, mac := b[:len(b)-relayMACSize], b[len(b)-relayMACSize:]
	if !hmac.Equal(mac, relayMAC(key, from, body)) {
		return m, fmt.Errorf("relay message: bad MAC: not signed by the key %s announces", from)
	}
	m.Kind = body[1]
	m.ID = binary.BigEndian.Uint64(body[2:])
	m.Epoch = binary.BigEndian.Uint64(body[10:])
	rest := body[18:]
	var err error
	for _, s := range []*string{&m.To, &m.A, &m.B} {
		if *s, rest, err = readString(rest); err != nil {
			return relayMsg{}, err
		}
	}
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > maxRelayNames || n > uint64(len(rest)) {
		return relayMsg{}, errors.New("relay message: bad name count")
	}
	rest = rest[k:]
	m.Names = make([]string, 0, n)
	for range n {
		var s string
		if s, rest, err = readString(rest); err != nil {
			return relayMsg{}, err
		}
		m.Names = append(m.Names, s)
	}
	if len(rest) != 0 {
		return relayMsg{}, errors.New("relay message: trailing bytes")
	}
	return m, nil
}

func readString(b []byte) (string, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, errors.New("relay message: bad string length")
	}
	return string(b[k : k+int(n)]), b[k+int(n):], nil
}

func relayMAC(key [32]byte, from string, body []byte) []byte {
	h := hmac.New(sha256.New, key[:])
	h.Write(appendString(nil, from))
	h.Write(body)
	return h.Sum(nil)[:relayMACSize]
}

// relayMACKey is the key of the messages between the holder of priv and
// the node whose public key is pub: the same on both ends.
func relayMACKey(priv, pub wgtypes.Key) ([32]byte, error) {
	k, err := pairKey("weft relay signalling v1\x00", priv, pub)
	if err != nil {
		return k, fmt.Errorf("relay message key: %w", err)
	}
	return k, nil
}

// pairKey is a key that the holder of priv and the node whose public key
// is pub derive alike: SHA-256 of label and their static X25519 secret.
func pairKey(label string, priv, pub wgtypes.Key) ([32]byte, error) {
	shared, err := curve25519.X25519(priv[:], pub[:])
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(append([]byte(label), shared...)), nil
}
