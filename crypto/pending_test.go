package crypto

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPendingKeyLifecycle(t *testing.T) {
	dir := t.TempDir()
	cur, err := LoadOrCreatePrivateKey(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := LoadPendingKey(dir, nil); ok || err != nil {
		t.Fatalf("LoadPendingKey without a rotation: ok %v, err %v; want none", ok, err)
	}
	next, err := CreatePendingKey(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if next == cur {
		t.Fatal("the pending key is the current key")
	}
	again, err := CreatePendingKey(dir, nil)
	if err != nil || again != next {
		t.Fatalf("a second CreatePendingKey gave another key (%v): a rotation under way must keep its key", err)
	}
	// A restart mid-rotation finds both keys.
	if k, _ := LoadOrCreatePrivateKey(dir, nil); k != cur {
		t.Fatal("the current key changed before the switch")
	}
	if k, ok, _ := LoadPendingKey(dir, nil); !ok || k != next {
		t.Fatal("the pending key is not found after a restart")
	}
	if err := CommitPendingKey(dir); err != nil {
		t.Fatal(err)
	}
	if k, _ := LoadOrCreatePrivateKey(dir, nil); k != next {
		t.Fatal("after the switch the key file does not hold the new key")
	}
	if _, err := os.Stat(filepath.Join(dir, PendingKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("the pending key file is still there after the switch: %v", err)
	}
	if err := CommitPendingKey(dir); err == nil {
		t.Fatal("CommitPendingKey without a pending key succeeded")
	}
}

func TestSecretFingerprint(t *testing.T) {
	a, b := Secret("0123456789abcdef0123"), Secret("0123456789abcdef0124")
	if a.Fingerprint() == b.Fingerprint() || len(a.Fingerprint()) != 16 {
		t.Fatalf("fingerprints %s and %s", a.Fingerprint(), b.Fingerprint())
	}
	if a.Fingerprint() != Secret(append([]byte(nil), a...)).Fingerprint() || !a.Equal(Secret("0123456789abcdef0123")) || a.Equal(b) {
		t.Fatal("the same secret must give the same fingerprint and compare equal")
	}
}
