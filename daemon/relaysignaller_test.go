package daemon

import (
	"log/slog"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestRelaySignallerKeySwitch: after a key rotation, the node's relay
// messages are signed with its new key, which its peers check them with;
// signed with the old one they would be refused by every peer for good.
func TestRelaySignallerKeySwitch(t *testing.T) {
	ka, kb, ka2 := relayTestKeys(t)
	var mu sync.Mutex
	keys := map[string]wgtypes.Key{"a": ka.PublicKey(), "b": kb.PublicKey()}
	lookup := func(name string) (wgtypes.Key, bool) {
		mu.Lock()
		defer mu.Unlock()
		k, ok := keys[name]
		return k, ok
	}
	var wire [][]byte
	a := newRelaySignaller(relaySignallerConfig{Self: "a", Private: ka, PublicKey: lookup,
		Broadcast: func(b []byte) { wire = append(wire, b[1:]) }, Log: slog.New(slog.DiscardHandler)})
	b := newRelaySignaller(relaySignallerConfig{Self: "b", Private: kb, PublicKey: lookup,
		Broadcast: func([]byte) {}, Log: slog.New(slog.DiscardHandler)})

	// deliver sends one message from a to b and reports whether b took it.
	deliver := func() bool {
		wire = nil
		a.send([]relayMsg{{Kind: kindReport, ID: 1, Epoch: 1, To: "b", Names: []string{"c"}}})
		if len(wire) != 1 {
			t.Fatalf("a sent %d messages, want 1", len(wire))
		}
		b.receive("a", wire[0])
		select {
		case in := <-b.in:
			return in.from == "a"
		default:
			return false
		}
	}
	if !deliver() {
		t.Fatal("b refused a's message before the rotation")
	}
	// a switches to its next key and announces it.
	mu.Lock()
	keys["a"] = ka2.PublicKey()
	mu.Unlock()
	a.setPrivate(ka2)
	if !deliver() {
		t.Fatal("b refused a's message after a switched its key; a still signs with the old one")
	}
	// And b's messages to a: a checks them with its new key.
	var back [][]byte
	b.cfg.Broadcast = func(m []byte) { back = append(back, m[1:]) }
	b.send([]relayMsg{{Kind: kindReport, ID: 2, Epoch: 1, To: "a", Names: []string{}}})
	a.receive("b", back[0])
	select {
	case <-a.in:
	default:
		t.Fatal("a refused b's message after a switched its key")
	}
}
