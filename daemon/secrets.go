package daemon

import (
	"slices"
	"strings"
	"time"

	"github.com/weftnet/weft/crypto"
)

// Cluster secret rotation, seen from one node:
//
//	one secret ──new secret in --secret-file or the Secret──► overlap
//	    ▲          (held for receiving; its fingerprint        │
//	    │           announced in gossip)                       │
//	    │                                                      │
//	    └────────── --secret-overlap after the new secret ─────┘
//	                arrived: the older secrets are dropped
//
// During the overlap the node holds several secrets, newest first:
//   - gossip accepts every held secret's key and encrypts with the newest
//     one every live member holds (so a member still on the old secret
//     keeps hearing, and everyone moves once all have the new one);
//   - the WireGuard preshared key with a peer is derived from the newest
//     secret both hold, so each pair moves when both ends have the new
//     secret, peer by peer;
//   - a peer that holds none of this node's secrets gets no tunnel (and
//     cannot read its gossip anyway).
//
// When the overlap ends, the node keeps only its newest secret: a node
// that never got it falls out of the mesh and loses its tunnels.

// heldSecret is one secret the node holds and since when.
type heldSecret struct {
	s     crypto.Secret
	fp    string
	since time.Time
}

// secretSet is the secrets a node holds, newest first. Plain data: the
// agent holds it under a.mu.
type secretSet struct {
	held []heldSecret
}

func newSecretSet(s crypto.Secret, now time.Time) secretSet {
	if s == nil {
		return secretSet{}
	}
	return secretSet{held: []heldSecret{{s: s, fp: s.Fingerprint(), since: now}}}
}

// empty reports a node without a secret (--insecure).
func (ss *secretSet) empty() bool { return len(ss.held) == 0 }

// observe takes the secret the source (file or Kubernetes Secret) holds
// now; it reports whether that is new to the node. A secret held already
// but older comes first again (an operator rolling back).
func (ss *secretSet) observe(s crypto.Secret, now time.Time) bool {
	if len(ss.held) > 0 && ss.held[0].s.Equal(s) {
		return false
	}
	ss.held = slices.DeleteFunc(ss.held, func(h heldSecret) bool { return h.s.Equal(s) })
	ss.held = append([]heldSecret{{s: s, fp: s.Fingerprint(), since: now}}, ss.held...)
	return true
}

// expire drops every secret but the newest once the newest has been held
// for overlap; it reports whether it dropped any.
func (ss *secretSet) expire(now time.Time, overlap time.Duration) bool {
	if len(ss.held) < 2 || now.Sub(ss.held[0].since) < overlap {
		return false
	}
	ss.held = ss.held[:1]
	return true
}

// overlapEnds is when the older secrets will be dropped; zero when the
// node holds one secret.
func (ss *secretSet) overlapEnds(overlap time.Duration) time.Time {
	if len(ss.held) < 2 {
		return time.Time{}
	}
	return ss.held[0].since.Add(overlap)
}

// fingerprints are the held secrets' fingerprints, newest first, as
// gossip announces them (mesh.Meta.Secrets).
func (ss *secretSet) fingerprints() string {
	fps := make([]string, len(ss.held))
	for i, h := range ss.held {
		fps[i] = h.fp
	}
	return strings.Join(fps, ",")
}

// primary is the secret to encrypt gossip with: the newest held secret
// that every live member holds (members: each one's fingerprints), else
// the oldest held, which members not yet told of the new one still have.
func (ss *secretSet) primary(members [][]string) crypto.Secret {
	if ss.empty() {
		return nil
	}
	for _, h := range ss.held {
		all := true
		for _, fps := range members {
			all = all && slices.Contains(fps, h.fp)
		}
		if all {
			return h.s
		}
	}
	return ss.held[len(ss.held)-1].s
}

// shared is the newest secret this node and a peer holding fps both
// hold: the pair's preshared key comes from it. A peer that announces no
// fingerprint (an older weft) gets the primary one's part: nil here, and
// the caller decides. ok is false when the peer holds none of them.
func (ss *secretSet) shared(fps []string) (s crypto.Secret, ok bool) {
	if len(fps) == 0 {
		return nil, true
	}
	for _, h := range ss.held {
		if slices.Contains(fps, h.fp) {
			return h.s, true
		}
	}
	return nil, false
}

// others are the held secrets but s, for the gossip keyring.
func (ss *secretSet) others(s crypto.Secret) []crypto.Secret {
	var out []crypto.Secret
	for _, h := range ss.held {
		if !h.s.Equal(s) {
			out = append(out, h.s)
		}
	}
	return out
}
