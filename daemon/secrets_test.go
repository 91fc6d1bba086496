package daemon

import (
	"testing"
	"time"

	"github.com/weftnet/weft/crypto"
)

func TestSecretSetRotation(t *testing.T) {
	t0 := time.Unix(1000, 0)
	overlap := time.Minute
	old, next, other := crypto.Secret("the old secret, sixteen+"), crypto.Secret("the new secret, sixteen+"), crypto.Secret("an unrelated secret.....")
	ss := newSecretSet(old, t0)
	if got := ss.fingerprints(); got != old.Fingerprint() {
		t.Fatalf("fingerprints %q, want the old one alone", got)
	}
	if ss.observe(old, t0.Add(time.Second)) {
		t.Fatal("the same secret again counted as new")
	}
	if !ss.observe(next, t0.Add(10*time.Second)) {
		t.Fatal("a new secret did not count as new")
	}
	if got, want := ss.fingerprints(), next.Fingerprint()+","+old.Fingerprint(); got != want {
		t.Fatalf("fingerprints %q, want newest first %q", got, want)
	}
	if ends := ss.overlapEnds(overlap); !ends.Equal(t0.Add(70 * time.Second)) {
		t.Fatalf("overlap ends %v, want a minute after the new secret came", ends)
	}

	// Gossip: the new key becomes primary once every live member holds it.
	both := []string{next.Fingerprint(), old.Fingerprint()}
	oldOnly := []string{old.Fingerprint()}
	tests := []struct {
		name    string
		members [][]string
		want    crypto.Secret
	}{
		{"alone", nil, next},
		{"every member holds both", [][]string{both, both}, next},
		{"a member has only the old one", [][]string{both, oldOnly}, old},
	}
	for _, tt := range tests {
		t.Run("primary "+tt.name, func(t *testing.T) {
			if got := ss.primary(tt.members); !got.Equal(tt.want) {
				t.Fatalf("primary is the wrong secret (%s)", got.Fingerprint())
			}
		})
	}
	if others := ss.others(next); len(others) != 1 || !others[0].Equal(old) {
		t.Fatal("others of the new secret must be the old one")
	}

	// Preshared keys: pair by pair, the newest both hold.
	for _, tt := range []struct {
		name string
		fps  []string
		want crypto.Secret
		ok   bool
	}{
		{"peer holds both", both, next, true},
		{"peer holds the old one", oldOnly, old, true},
		{"peer holds only the new one", []string{next.Fingerprint()}, next, true},
		{"peer holds an unrelated one", []string{other.Fingerprint()}, nil, false},
		{"peer announces none (older weft)", nil, nil, true},
	} {
		t.Run("shared "+tt.name, func(t *testing.T) {
			got, ok := ss.shared(tt.fps)
			if ok != tt.ok || !got.Equal(tt.want) {
				t.Fatalf("shared = %v, %v; want the %v secret, %v", got.Fingerprint(), ok, tt.want.Fingerprint(), tt.ok)
			}
		})
	}

	// The overlap ends: only the new secret stays; a peer on the old
	// one is refused from then on.
	if ss.expire(t0.Add(69*time.Second), overlap) {
		t.Fatal("expired before the overlap ended")
	}
	if !ss.expire(t0.Add(70*time.Second), overlap) {
		t.Fatal("did not expire when the overlap ended")
	}
	if got := ss.fingerprints(); got != next.Fingerprint() {
		t.Fatalf("after the overlap: %q, want the new secret alone", got)
	}
	if _, ok := ss.shared(oldOnly); ok {
		t.Fatal("a peer with only the old secret is still accepted after the overlap")
	}
	if !ss.overlapEnds(overlap).IsZero() || ss.expire(t0.Add(time.Hour), overlap) {
		t.Fatal("an overlap with one secret")
	}
}

// TestSecretSetRollback: an operator who puts the old secret back makes it
// the newest again, with a new overlap.
func TestSecretSetRollback(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a, b := crypto.Secret("secret number one......"), crypto.Secret("secret number two......")
	ss := newSecretSet(a, t0)
	ss.observe(b, t0.Add(time.Second))
	if !ss.observe(a, t0.Add(2*time.Second)) {
		t.Fatal("the rollback did not count")
	}
	if got, want := ss.fingerprints(), a.Fingerprint()+","+b.Fingerprint(); got != want {
		t.Fatalf("fingerprints %q, want %q", got, want)
	}
}

func TestSecretSetInsecure(t *testing.T) {
	ss := newSecretSet(nil, time.Unix(0, 0))
	if !ss.empty() || ss.fingerprints() != "" || ss.primary(nil) != nil {
		t.Fatal("an insecure node holds something")
	}
}
