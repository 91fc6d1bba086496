package cli

import (
	"strings"
	"testing"

	"github.com/weftnet/weft/daemon"
)

func TestPrintPeersPathsAndNAT(t *testing.T) {
	st := daemon.PeersStatus{
		Node: "node3", Ready: true, NATKind: "cone", Reflexive: "172.30.0.253:10001",
		LivePeers: 2, DirectPeers: 1, DirectShare: 0.5,
		Peers: []daemon.PeerStatus{
			{Name: "node1", State: "alive", Path: "direct", DirectPath: "up", RTT: 0.0015, ProbeLoss: 0.05, NATKind: "none"},
			{Name: "node5", State: "alive", Path: "relayed", Via: "node1", DirectPath: "down", ProbeLoss: 1, NATKind: "symmetric"},
		},
	}
	var b strings.Builder
	if err := printPeers(&b, st); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"NAT: cone, public endpoint 172.30.0.253:10001",
		"direct: 1 of 2 live peers (50%)",
		"relayed via node1",
		"1.5ms", "5%", "100%", "symmetric",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}

func TestPrintPeersRotation(t *testing.T) {
	st := daemon.PeersStatus{
		Node: "node1", Ready: true,
		KeyRotation: daemon.KeyRotationStatus{State: "pending", NextPublicKey: "CoWrkgk95HUHxVB8yI5fp1IFZ1Mw5iqkWTqAYyGTpzg=",
			Since: "2026-01-01T00:00:00Z", Waiting: []string{"node3"}},
		Secrets: &daemon.SecretsStatus{Held: []string{"aaaa", "bbbb"}, Gossip: "bbbb", OverlapEnds: "2026-01-01T00:10:00Z"},
		Peers:   []daemon.PeerStatus{{Name: "node2", State: "alive", Path: "direct", NextPublicKey: "xyz…"}},
	}
	var b strings.Builder
	if err := printPeers(&b, st); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"key rotation: pending since 2026-01-01T00:00:00Z", "waiting for node3",
		"holding aaaa, bbbb (newest first), gossip with bbbb, overlap ends 2026-01-01T00:10:00Z",
		"peer node2 rotates its key to xyz…",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}
