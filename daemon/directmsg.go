package daemon

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Direct messages (the allocator's donation requests and answers, key
// rotation acks and switch notices) go from one node to one other through
// mesh.SendTo. memberlist hands them over without their sender, and the
// name in the mesh envelope is whatever the sending member wrote there, so
// each carries a MAC that proves it comes from the holder of the
// WireGuard key the member of that name announces (and, with Kubernetes,
// that its Node carries). Wire form, after the message's one-byte tag:
//
//	body | mac (16)
//
// The MAC is HMAC-SHA256, cut to 16 bytes, keyed by the static X25519
// secret of the sender's and the addressee's WireGuard keys, over a
// version label, the sender's and the addressee's names, the tag and the
// body. The same pair of keys gives the same key on both ends.
const directMACSize = 16

// errDirectMAC is returned for a direct message that no key pair of the
// two ends authenticates.
var errDirectMAC = errors.New("bad MAC: not signed by the key its sender announces")

// directKeys derives and caches the MAC keys of direct messages.
type directKeys struct {
	mu    sync.Mutex
	cache map[[2]wgtypes.Key][32]byte // by (own private key, peer public key)
}

func (d *directKeys) key(priv, pub wgtypes.Key) ([32]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if k, ok := d.cache[[2]wgtypes.Key{priv, pub}]; ok {
		return k, nil
	}
	k, err := pairKey("weft direct messages v1\x00", priv, pub)
	if err != nil {
		return k, fmt.Errorf("direct message key: %w", err)
	}
	if d.cache == nil || len(d.cache) > 4096 {
		d.cache = map[[2]wgtypes.Key][32]byte{}
	}
	d.cache[[2]wgtypes.Key{priv, pub}] = k
	return k, nil
}

// seal returns tag, body and the MAC of the message from the holder of
// priv to the node whose public key is pub.
func (d *directKeys) seal(priv, pub wgtypes.Key, from, to string, tag byte, body []byte) ([]byte, error) {
	k, err := d.key(priv, pub)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, 1+len(body)+directMACSize)
	out = append(append(out, tag), body...)
	return append(out, directMAC(k, from, to, tag, body)...), nil
}

// open checks msg (tag, body, MAC), sent by from to to, against every pair
// of one of this node's private keys (privs: the current one, and the next
// one while a key rotation is pending, since a peer may already address
// it) and one of the sender's public keys (pubs: the one it announces,
// and its announced next one, which it signs with from its switch on). It
// returns the body.
func (d *directKeys) open(privs, pubs []wgtypes.Key, from, to string, msg []byte) ([]byte, error) {
	if len(msg) < 1+directMACSize {
		return nil, fmt.Errorf("message of %d bytes is too short to carry a MAC (a weft older than this one?)", len(msg))
	}
	tag, body, mac := msg[0], msg[1:len(msg)-directMACSize], msg[len(msg)-directMACSize:]
	for _, priv := range privs {
		for _, pub := range pubs {
			if priv == (wgtypes.Key{}) || pub == (wgtypes.Key{}) {
				continue
			}
			k, err := d.key(priv, pub)
			if err != nil {
				continue
			}
			if hmac.Equal(mac, directMAC(k, from, to, tag, body)) {
				return body, nil
			}
		}
	}
	return nil, errDirectMAC
}

func directMAC(key [32]byte, from, to string, tag byte, body []byte) []byte {
	h := hmac.New(sha256.New, key[:])
	h.Write(appendString(appendString(nil, from), to))
	h.Write([]byte{tag})
	h.Write(body)
	return h.Sum(nil)[:directMACSize]
}
