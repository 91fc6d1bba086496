package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/crypto"
)

// Key rotation messages between nodes, sent directly (mesh.SendTo) with a
// one-byte tag and a 32-byte public key, signed (directmsg.go).
const (
	// tagKeyAck: "I accept this key as your next one" (peer → rotating node).
	tagKeyAck byte = 'a'
	// tagKeySwitched: "I use this key now" (rotating node → every peer).
	tagKeySwitched byte = 's'
)

// ackRepeat is how often a peer repeats its ack while a next key is
// announced: a rotating node that restarted has forgotten the acks.
const ackRepeat = 2 * time.Second

// outMsg is a direct message waiting to be sent by sendLoop.
type outMsg struct {
	to  string
	msg []byte
}

// resumeKeyRotation picks up a rotation a previous run left pending.
func (a *agent) resumeKeyRotation() error {
	next, ok, err := crypto.LoadPendingKey(a.cfg.StateDir, a.log)
	if err != nil || !ok {
		return err
	}
	a.rot.begin(next, time.Now())
	a.log.Info("resuming the key rotation under way", "public-key", a.key.PublicKey().String(), "next-public-key", next.PublicKey().String())
	return nil
}

// RotateKey starts a rotation of this node's WireGuard key (see
// keyRotation) and returns the next public key. A rotation under way goes
// on with its key.
func (a *agent) RotateKey(ctx context.Context) (string, error) {
	next, err := crypto.CreatePendingKey(a.cfg.StateDir, a.log)
	if err != nil {
		return "", err
	}
	a.mu.Lock()
	started := !a.rot.pending()
	a.rot.begin(next, time.Now())
	current := a.key.PublicKey()
	a.mu.Unlock()
	if started {
		a.log.Info("key rotation started: announcing the next key", "public-key", current.String(), "next-public-key", next.PublicKey().String())
	}
	if err := a.mesh.SetMeta(a.meta()); err != nil {
		return "", fmt.Errorf("announce the next key: %w", err)
	}
	a.trigger()
	return next.PublicKey().String(), nil
}

// autoRotateKeys starts a rotation whenever the key file is older than
// --key-rotation.
func (a *agent) autoRotateKeys(ctx context.Context) error {
	every := min(max(a.cfg.KeyRotation/10, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		info, err := os.Stat(filepath.Join(a.cfg.StateDir, crypto.PrivateKeyFile))
		if err != nil {
			continue
		}
		a.mu.Lock()
		pending := a.rot.pending()
		a.mu.Unlock()
		if !pending && dueForRotation(info.ModTime(), a.cfg.KeyRotation, time.Now()) {
			if _, err := a.RotateKey(ctx); err != nil {
				a.log.Warn("automatic key rotation", "err", err)
			}
		}
	}
}

// handleKeyMsg takes a key rotation message from a peer.
func (a *agent) handleKeyMsg(from string, tag byte, payload []byte) error {
	if len(payload) != wgtypes.KeyLen {
		return fmt.Errorf("key message of %d bytes, want %d", len(payload), wgtypes.KeyLen)
	}
	pub := wgtypes.Key(payload)
	a.mu.Lock()
	defer a.mu.Unlock()
	switch tag {
	case tagKeyAck:
		if a.rot.ack(from, pub) {
			a.trigger()
		}
	case tagKeySwitched:
		if kp := a.peers[from]; kp != nil && kp.NextKey == pub && !kp.NextRefused {
			a.switched[from] = pub
			a.trigger()
		}
	}
	return nil
}

// send queues a direct message; it never blocks (a full queue drops it:
// acks are repeated, and a lost switch notice is caught up by gossip).
// Callers do not hold a.mu.
func (a *agent) send(to string, tag byte, payload []byte) {
	msg, err := a.sealDirect(to, tag, payload)
	if err != nil {
		a.log.Debug("direct message not sent", "peer", to, "err", err)
		return
	}
	select {
	case a.out <- outMsg{to: to, msg: msg}:
	default:
		a.log.Debug("direct message queue full; dropped", "peer", to)
	}
}

// sendLoop sends the queued direct messages.
func (a *agent) sendLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-a.out:
			if err := a.mesh.SendTo(m.to, m.msg); err != nil {
				a.log.Debug("direct message not sent", "peer", m.to, "err", err)
			}
		}
	}
}

// sendKeyAcks acks the next key of every live peer that announces one
// this node accepts, and repeats the ack every ackRepeat. Reconcile loop.
func (a *agent) sendKeyAcks(now time.Time) {
	a.mu.Lock()
	var due []*knownPeer
	for name, kp := range a.peers {
		if !kp.Alive || kp.KeyRefused || kp.NextRefused || kp.NextKey == (wgtypes.Key{}) {
			delete(a.acked, name)
			continue
		}
		if last, ok := a.acked[name]; ok && last.key == kp.NextKey && now.Sub(last.at) < ackRepeat {
			continue
		}
		a.acked[name] = ackRecord{key: kp.NextKey, at: now}
		due = append(due, kp)
	}
	a.mu.Unlock()
	for _, kp := range due {
		a.send(kp.Name, tagKeyAck, kp.NextKey[:])
	}
}

// downGrace is how long a peer that is not alive is still waited for by a
// switch: longer than the mesh takes to declare a node dead, so that a
// daemon restarted mid-rotation (its peers restored from the state
// directory, not yet confirmed by gossip) does not switch before it knows
// who is alive.
const downGrace = 10 * time.Second

// livePeerNames are the peers a switch waits for: not refused, and alive
// or seen within downGrace. Callers hold a.mu.
func (a *agent) livePeerNames(now time.Time) []string {
	var out []string
	for name, kp := range a.peers {
		if !kp.KeyRefused && (kp.Alive || now.Sub(kp.LastSeen) < downGrace) {
			out = append(out, name)
		}
	}
	return out
}

// advanceKeyRotation switches to the next key once every live peer acked
// it: the pending file becomes the key file, the device takes the key,
// gossip announces it, and every live peer is told directly. Reconcile
// loop only.
func (a *agent) advanceKeyRotation(now time.Time) {
	a.mu.Lock()
	if !a.rot.pending() {
		a.mu.Unlock()
		return
	}
	live := a.livePeerNames(now)
	waiting := a.rot.waiting(live)
	next := a.rot.next
	a.mu.Unlock()
	if len(waiting) > 0 {
		return
	}
	if err := crypto.CommitPendingKey(a.cfg.StateDir); err != nil {
		a.log.Error("key rotation: cannot store the new key; staying on the old one", "err", err)
		return
	}
	old := a.key.PublicKey()
	if err := a.tun.Configure(wgtypes.Config{PrivateKey: &next}); err != nil {
		// The key file holds the new key: the next pass sets it.
		a.log.Warn("key rotation: set the new key on the tunnel; retrying", "err", err)
	}
	a.mu.Lock()
	a.key = next
	a.rot.done(now)
	a.mu.Unlock()
	a.relays.setPrivate(next)
	for _, p := range live {
		pub := next.PublicKey()
		a.send(p, tagKeySwitched, pub[:])
	}
	if err := a.mesh.SetMeta(a.meta()); err != nil {
		a.log.Warn("announce the new key", "err", err)
	}
	a.log.Info("key rotation done: switched to the new key and forgot the old one",
		"old-public-key", old.String(), "public-key", next.PublicKey().String(), "peers", len(live))
}

// KeyRotationStatus is the "keyRotation" part of `weft status peers --json`.
type KeyRotationStatus struct {
	// State is idle or pending (the next key is announced, the switch
	// waits for the peers in Waiting to ack it).
	State         string   `json:"state"`
	NextPublicKey string   `json:"nextPublicKey,omitempty"`
	Since         string   `json:"since,omitempty"`
	Waiting       []string `json:"waiting,omitempty"`
	// Rotations counts the switches since the daemon started; LastSwitch
	// is the time of the latest, RFC 3339.
	Rotations  int    `json:"rotations"`
	LastSwitch string `json:"lastSwitch,omitempty"`
}

// keyRotationStatus reports the rotation state. Callers hold a.mu.
func (a *agent) keyRotationStatus() KeyRotationStatus {
	st := KeyRotationStatus{State: "idle", Rotations: a.rot.switches}
	if !a.rot.lastSwitch.IsZero() {
		st.LastSwitch = a.rot.lastSwitch.UTC().Format(time.RFC3339)
	}
	if a.rot.pending() {
		st.State = "pending"
		st.NextPublicKey = a.rot.next.PublicKey().String()
		st.Since = a.rot.since.UTC().Format(time.RFC3339)
		st.Waiting = a.rot.waiting(a.livePeerNames(time.Now()))
	}
	return st
}
