package daemon

import (
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Key rotation, seen from the rotating node:
//
//	          weft rotate-key, or the key is older than --key-rotation
//	idle ─────────────────────────────────────────────────────► pending
//	 ▲        (the next private key is written to                  │
//	 │         STATE_DIR/wireguard.key.next and its public key      │ every live peer
//	 │         announced in gossip as NextPublicKey)                │ acked the next key
//	 │                                                              ▼
//	 └──────────────────────────────────────────────────────── switching
//	   the pending file is renamed over wireguard.key, the device takes the
//	   new private key, gossip announces it, and every live peer is told at
//	   once by a direct message
//
// A peer acks a next key once it passes the peer's checks (the Node's key
// pin with Kubernetes); it configures nothing for it in advance. When told
// of the switch (directly, or by gossip if the message is lost), the peer
// replaces the old entry by one for the new key with the same allowed IPs
// in one configuration change. Until then the rotating node's packets to
// that peer wait in WireGuard's staging queue: its handshakes with the new
// key find no entry, so no data can arrive on an entry without the allowed
// IPs. The peer's change starts a handshake at once (keepalive), the
// staged packets follow it. The peer's own packets sent before its change
// travel on the old session, which the rotating node still decrypts.
//
// A restart in pending (crash, kill -9) finds the pending file and goes on
// with the same next key; the acks are asked for anew (peers repeat theirs
// while the next key is announced).

// keyRotation is the rotating node's state. Plain data: the agent holds it
// under a.mu and the reconcile loop drives it.
type keyRotation struct {
	next  wgtypes.Key // the pending private key; zero when idle
	since time.Time   // when the rotation began (or resumed)
	acks  map[string]wgtypes.Key

	lastSwitch time.Time
	switches   int
}

// pending reports whether a rotation is under way.
func (r *keyRotation) pending() bool { return r.next != (wgtypes.Key{}) }

// begin starts a rotation to next (a no-op when one is under way).
func (r *keyRotation) begin(next wgtypes.Key, now time.Time) {
	if r.pending() {
		return
	}
	r.next, r.since, r.acks = next, now, map[string]wgtypes.Key{}
}

// ack records that peer holds pub as this node's next key; an ack of
// another key (a rotation before a restart) is ignored.
func (r *keyRotation) ack(peer string, pub wgtypes.Key) bool {
	if !r.pending() || pub != r.next.PublicKey() {
		return false
	}
	r.acks[peer] = pub
	return true
}

// waiting returns the live peers that have not acked the next key yet,
// sorted. The switch may happen when it is empty.
func (r *keyRotation) waiting(live []string) []string {
	var out []string
	for _, p := range live {
		if r.acks[p] != r.next.PublicKey() {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// done records the switch: the node now uses the next key.
func (r *keyRotation) done(now time.Time) {
	r.next, r.acks = wgtypes.Key{}, nil
	r.lastSwitch = now
	r.switches++
}

// dueForRotation reports whether a key made at keyTime must be rotated
// under a --key-rotation of period (0: never).
func dueForRotation(keyTime time.Time, period time.Duration, now time.Time) bool {
	return period > 0 && !keyTime.IsZero() && now.Sub(keyTime) >= period
}

// peerKey decides which public key a peer's WireGuard entry uses from what
// it announces (current and next key) and the switch it may have told this
// node of directly (switched; zero when none). A switch notice counts only
// for the key the peer announced as next (or already as current), and is
// dropped once gossip caught up or the peer announces other keys.
func peerKey(current, next, switched wgtypes.Key) (use wgtypes.Key, keepNotice bool) {
	zero := wgtypes.Key{}
	switch {
	case switched == zero:
		return current, false
	case switched == current:
		return current, false // gossip caught up
	case switched == next:
		return switched, true
	}
	return current, false // a stale notice
}

// ackRecord is the last ack sent for a peer's next key.
type ackRecord struct {
	key wgtypes.Key
	at  time.Time
}

// pinAccepts reports whether a peer may use key when its Node carries
// pinned and, while it rotates, next ("" when not rotating).
func pinAccepts(pinned, next string, key wgtypes.Key) bool {
	k := key.String()
	return k == pinned || (next != "" && k == next)
}
