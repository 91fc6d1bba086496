package mesh

import (
	"bytes"
	"errors"
	"testing"
)

// TestSetKeysRotatesWithoutLosingMembers: n2 gets a new key beside the
// old one, n1 too, both make it primary, then drop the old one; they stay
// members of each other throughout, and a node that joins with only the
// new key gets in, while one with only the old key no longer does.
func TestSetKeysRotatesWithoutLosingMembers(t *testing.T) {
	n1 := startNode(t, testConfig(t, "n1"))
	n2 := startNode(t, testConfig(t, "n2", n1.addr()))
	waitFullMesh(t, converge, n1, n2)
	old := testGossipKey
	fresh := bytes.Repeat([]byte{7}, KeySize)

	steps := []struct {
		name    string
		primary []byte
		others  [][]byte
	}{
		{"hold the new key for receiving", old, [][]byte{fresh}},
		{"send with the new key", fresh, [][]byte{old}},
		{"drop the old key", fresh, nil},
	}
	for _, s := range steps {
		for _, n := range []*node{n2, n1} {
			if err := n.SetKeys(s.primary, s.others...); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			primary, all := n.Keys()
			if !bytes.Equal(primary, s.primary) || len(all) != 1+len(s.others) {
				t.Fatalf("%s: %s holds %d keys, primary %x", s.name, n.cfg.NodeName, len(all), primary[:4])
			}
		}
		if err := n1.SyncWith("n2"); err != nil {
			t.Fatalf("%s: push/pull n1 -> n2: %v", s.name, err)
		}
		waitFullMesh(t, converge, n1, n2)
	}

	newcomer := testConfig(t, "n3", n1.addr())
	newcomer.Key = fresh
	n3 := startNode(t, newcomer)
	waitFullMesh(t, converge, n1, n2, n3)

	stale := testConfig(t, "n4", n1.addr())
	stale.Key = old
	n4 := startNode(t, stale)
	waitFor(t, converge, "the node with the old key to retry", func() bool { return n4.joinAttempts.Load() >= 3 })
	if got := n4.memberNames(); len(got) != 0 {
		t.Errorf("the node with only the dropped key sees members %v", got)
	}
}

func TestSetKeysInsecureAndBadKeys(t *testing.T) {
	cfg := testConfig(t, "n1")
	cfg.Key = nil
	n := newNode(t, cfg)
	if err := n.SetKeys(testGossipKey); !errors.Is(err, ErrInsecure) {
		t.Errorf("SetKeys on an insecure mesh: %v, want ErrInsecure", err)
	}
	s := newNode(t, testConfig(t, "n2"))
	if err := s.SetKeys([]byte("short")); err == nil {
		t.Error("SetKeys took a short key")
	}
}
