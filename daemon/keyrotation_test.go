package daemon

import (
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func mustKey(t testing.TB) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeyRotationStates(t *testing.T) {
	now := time.Unix(1000, 0)
	next, other := mustKey(t), mustKey(t)
	var r keyRotation
	if r.pending() {
		t.Fatal("a new rotation state is pending")
	}
	r.begin(next, now)
	if !r.pending() {
		t.Fatal("not pending after begin")
	}
	r.begin(other, now) // a second rotate-key keeps the key peers know
	if r.next != next {
		t.Fatal("a second begin replaced the pending key")
	}
	live := []string{"c", "a", "b"}
	if got := r.waiting(live); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("waiting %v, want every live peer", got)
	}
	if r.ack("a", other.PublicKey()) {
		t.Fatal("an ack of another key counted")
	}
	r.ack("a", next.PublicKey())
	r.ack("c", next.PublicKey())
	r.ack("gone", next.PublicKey()) // a peer that left since: harmless
	if got := r.waiting(live); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("waiting %v, want [b] (the peer missing the key)", got)
	}
	// The peer that did not ack died: only live peers count.
	if got := r.waiting([]string{"a", "c"}); len(got) != 0 {
		t.Fatalf("waiting %v with b gone, want none", got)
	}
	r.done(now.Add(time.Second))
	if r.pending() || r.switches != 1 || r.ack("a", next.PublicKey()) {
		t.Fatal("after the switch: still pending, not counted, or acks still taken")
	}
}

// TestKeyRotationResume: a restart mid-rotation begins again with the
// pending key from disk; acks are asked for anew.
func TestKeyRotationResume(t *testing.T) {
	next := mustKey(t)
	var before keyRotation
	before.begin(next, time.Unix(1, 0))
	before.ack("a", next.PublicKey())
	var after keyRotation // the restarted daemon
	after.begin(next, time.Unix(5, 0))
	if got := after.waiting([]string{"a"}); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("waiting after a restart %v, want [a]: acks are not persisted", got)
	}
	after.ack("a", next.PublicKey())
	if len(after.waiting([]string{"a"})) != 0 {
		t.Fatal("the repeated ack did not count")
	}
}

func TestDueForRotation(t *testing.T) {
	now := time.Unix(100000, 0)
	tests := []struct {
		name   string
		made   time.Time
		period time.Duration
		want   bool
	}{
		{"off", now.Add(-1000 * time.Hour), 0, false},
		{"young", now.Add(-time.Hour), 24 * time.Hour, false},
		{"old", now.Add(-25 * time.Hour), 24 * time.Hour, true},
		{"unknown age", time.Time{}, time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dueForRotation(tt.made, tt.period, now); got != tt.want {
				t.Fatalf("dueForRotation = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPeerKey(t *testing.T) {
	cur, next, stale := mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey()
	zero := wgtypes.Key{}
	tests := []struct {
		name           string
		current, next  wgtypes.Key
		switched, want wgtypes.Key
		keep           bool
	}{
		{"no rotation", cur, zero, zero, cur, false},
		{"announced, not switched", cur, next, zero, cur, false},
		{"told of the switch before gossip", cur, next, next, next, true},
		{"gossip caught up", next, zero, next, next, false},
		{"a notice for a key never announced", cur, zero, stale, cur, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, keep := peerKey(tt.current, tt.next, tt.switched)
			if got != tt.want || keep != tt.keep {
				t.Fatalf("peerKey = %v, %v; want %v, %v", got, keep, tt.want, tt.keep)
			}
		})
	}
}

// TestPinAccepts: a Node's pin accepts its key, and the next key only
// while the Node announces one.
func TestPinAccepts(t *testing.T) {
	cur, next, other := mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey()
	tests := []struct {
		name       string
		pinned     string
		pinnedNext string
		key        wgtypes.Key
		want       bool
	}{
		{"the pinned key", cur.String(), "", cur, true},
		{"another key, not rotating", cur.String(), "", other, false},
		{"the next key of a rotating node", cur.String(), next.String(), next, true},
		{"the old key of a rotating node", cur.String(), next.String(), cur, true},
		{"another key of a rotating node", cur.String(), next.String(), other, false},
		{"after the switch, the old key", next.String(), "", cur, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pinAccepts(tt.pinned, tt.pinnedNext, tt.key); got != tt.want {
				t.Fatalf("pinAccepts = %v, want %v", got, tt.want)
			}
		})
	}
}
