package daemon

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func testAgent(stateDir, name string) *agent {
	return &agent{
		cfg:   Config{StateDir: stateDir, NodeName: name},
		log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		peers: map[string]*knownPeer{},
	}
}

// TestPeersSurviveARestart: the peers a daemon knew come back in the next
// one before gossip says anything, as peers not yet seen alive, so its
// tunnel gets them at its first reconcile.
func TestPeersSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	before := testAgent(dir, "node1")
	kp := &knownPeer{Alive: true, Endpoint: "10.0.0.2:6784", Announced: netip.MustParseAddr("10.40.0.1")}
	kp.Name, kp.PublicKey = "node2", key.PublicKey()
	before.peers["node2"] = kp
	before.rememberPeers()

	now := time.Unix(1000, 0)
	after := testAgent(dir, "node1")
	after.restorePeers(now)
	got := after.peers["node2"]
	if got == nil || len(after.peers) != 1 {
		t.Fatalf("restored peers %v, want node2 only", after.peers)
	}
	if got.PublicKey != key.PublicKey() || got.Endpoint != "10.0.0.2:6784" || got.peer.Endpoint.String() != "10.0.0.2:6784" ||
		got.Announced != kp.Announced || got.Alive || !got.LastSeen.Equal(now) {
		t.Errorf("restored %+v, want node2's key, endpoint and address, not alive, last seen now", got)
	}
	fi, err := os.Stat(filepath.Join(dir, peersFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, mode %v; want 0600", peersFile, err, fi.Mode().Perm())
	}

	// Unchanged peers are not written again.
	os.Remove(filepath.Join(dir, peersFile))
	after.rememberPeers()
	if _, err := os.Stat(filepath.Join(dir, peersFile)); err == nil {
		t.Error("unchanged peers were written again")
	}
}

func TestRestorePeersIgnoresBadEntries(t *testing.T) {
	key, _ := wgtypes.GeneratePrivateKey()
	tests := []struct {
		name, file string
		want       int
	}{
		{"no file", "", 0},
		{"garbage", "{not json", 0},
		{"self and a bad key", `[{"name":"node1","publicKey":"` + key.PublicKey().String() + `"},{"name":"node3","publicKey":"nope"}]`, 0},
		{"one good", `[{"name":"node2","publicKey":"` + key.PublicKey().String() + `"}]`, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.file != "" {
				os.WriteFile(filepath.Join(dir, peersFile), []byte(tt.file), 0o600)
			}
			a := testAgent(dir, "node1")
			a.restorePeers(time.Now())
			if len(a.peers) != tt.want {
				t.Errorf("restored %d peers, want %d", len(a.peers), tt.want)
			}
		})
	}
}
