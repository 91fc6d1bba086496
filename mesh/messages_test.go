package mesh

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestAppDelegate(t *testing.T) {
	n1 := startNode(t, testConfig(t, "n1"))
	n2 := startNode(t, testConfig(t, "n2", n1.addr()))
	n3 := startNode(t, testConfig(t, "n3", n1.addr()))
	nodes := []*node{n1, n2, n3}
	waitFullMesh(t, converge, nodes...)

	t.Run("state push/pull", func(t *testing.T) {
		// Joining pushes and pulls with the seed; SyncNow and the
		// periodic push/pull reach the others.
		for _, n := range nodes {
			if err := n.SyncNow(); err != nil {
				t.Fatalf("%s SyncNow: %v", n.cfg.NodeName, err)
			}
		}
		for _, n := range nodes {
			for _, o := range nodes {
				if o == n {
					continue
				}
				waitFor(t, converge, n.cfg.NodeName+" to merge the state of "+o.cfg.NodeName, func() bool {
					return n.app.merged("state-of-"+o.cfg.NodeName) > 0
				})
			}
		}
	})

	tests := []struct {
		name string
		size int
	}{
		{"small broadcast", 100},
		{"large broadcast", 4 << 10},
		// The envelope header from "n1" takes 12 bytes.
		{"broadcast at the gossip limit", maxGossipEnvelope - 12},
		{"broadcast just over the gossip limit", maxGossipEnvelope - 11},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := string(bytes.Repeat([]byte{'a' + byte(i)}, tt.size))
			n1.Broadcast([]byte(msg))
			for _, n := range []*node{n2, n3} {
				waitFor(t, converge, n.cfg.NodeName+" to receive the broadcast", func() bool {
					return n.app.received("n1: "+msg) > 0
				})
			}
			if got := n1.app.received("n1: " + msg); got != 0 {
				t.Errorf("sender received its own broadcast %d times", got)
			}
		})
	}

	t.Run("send to one", func(t *testing.T) {
		if err := n2.SendTo("n3", []byte("just for n3")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, converge, "n3 to receive", func() bool { return n3.app.received("n2: just for n3") == 1 })
		if n1.app.received("n2: just for n3") != 0 {
			t.Error("n1 received a message sent to n3")
		}
		if err := n2.SendTo("nobody", []byte("x")); !errors.Is(err, ErrUnknownPeer) {
			t.Errorf("SendTo(nobody) = %v, want ErrUnknownPeer", err)
		}
	})

	// Every broadcast is delivered once despite relaying.
	for _, n := range []*node{n2, n3} {
		n.app.mu.Lock()
		msgs := slices.Clone(n.app.msgs)
		n.app.mu.Unlock()
		slices.Sort(msgs)
		if len(slices.Compact(slices.Clone(msgs))) != len(msgs) {
			t.Errorf("%s received duplicates", n.cfg.NodeName)
		}
	}
}

func TestUnreadableMetaIgnored(t *testing.T) {
	n1 := startNode(t, testConfig(t, "n1"))
	n2 := startNode(t, testConfig(t, "n2", n1.addr()))
	waitFullMesh(t, converge, n1, n2)

	// n3 announces metadata of an incompatible version from the start.
	n3 := newNode(t, testConfig(t, "n3", n1.addr()))
	setRawMeta(t, n3, []byte{ProtoVersion + 1, 0xde, 0xad})
	n3.run(t)
	waitFor(t, converge, "n1 to know n3 in memberlist", func() bool {
		n1.Mesh.mu.Lock()
		defer n1.Mesh.mu.Unlock()
		_, ok := n1.Mesh.alive["n3"]
		return ok
	})
	if evs := n1.eventsFor("n3"); len(evs) != 0 {
		t.Fatalf("events for a peer with unreadable metadata: %v", evs)
	}
	if slices.Contains(n1.memberNames(), "n3") {
		t.Fatal("peer with unreadable metadata in Members")
	}

	// A valid update makes it appear.
	if err := n3.SetMeta(Meta{Endpoint: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, converge, "n1 to see n3 join", func() bool {
		ev, ok := n1.lastEvent("n3")
		return ok && ev.Type == EventJoin && ev.Peer.Meta.Endpoint == "127.0.0.1:1"
	})

	// Unreadable again: it disappears with a Leave, logged once.
	setRawMeta(t, n2, []byte{})
	setRawMeta(t, n2, []byte{ProtoVersion, 0xff})
	waitFor(t, converge, "n1 to drop n2", func() bool {
		ev, ok := n1.lastEvent("n2")
		return ok && ev.Type == EventLeave && !slices.Contains(n1.memberNames(), "n2")
	})
	if got := strings.Count(n1.logs.String(), `msg="ignoring peer with unreadable metadata until it sends a valid update" peer=n3`); got != 1 {
		t.Errorf("unreadable metadata of n3 logged %d times, want once", got)
	}
}

// setRawMeta makes n announce raw metadata, bypassing Encode.
func setRawMeta(t *testing.T, n *node, raw []byte) {
	t.Helper()
	n.Mesh.mu.Lock()
	n.Mesh.metaBytes = raw
	n.Mesh.mu.Unlock()
	if err := n.ml.UpdateNode(updateTimeout); err != nil {
		t.Logf("UpdateNode: %v", err)
	}
}

func TestEnvelope(t *testing.T) {
	tests := []struct {
		name    string
		typ     byte
		id      uint64
		from    string
		payload string
	}{
		{"broadcast", msgBroadcast, 0xfeedface, "node-1", "hello"},
		{"direct", msgDirect, 0, "n", ""},
		{"leaving", msgLeaving, 0, "some-node", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := append(appendEnvelopeHeader(nil, tt.typ, tt.id, tt.from), tt.payload...)
			typ, id, from, payload, err := parseEnvelope(buf)
			if err != nil || typ != tt.typ || id != tt.id || from != tt.from || string(payload) != tt.payload {
				t.Fatalf("parseEnvelope = %d %x %q %q %v", typ, id, from, payload, err)
			}
		})
	}
	for _, bad := range [][]byte{nil, {9}, {msgBroadcast, 1, 2}, {msgDirect, 5, 'a'}, {msgDirect, 0x80}} {
		if _, _, _, _, err := parseEnvelope(bad); err == nil {
			t.Errorf("parseEnvelope(%x) succeeded", bad)
		}
	}
}

func FuzzParseEnvelope(f *testing.F) {
	f.Add(appendEnvelopeHeader(nil, msgBroadcast, 1, "n1"))
	f.Add(append(appendEnvelopeHeader(nil, msgDirect, 0, "n2"), "payload"...))
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, id, from, payload, err := parseEnvelope(b)
		if err != nil {
			return
		}
		again := append(appendEnvelopeHeader(nil, typ, id, from), payload...)
		typ2, id2, from2, payload2, err := parseEnvelope(again)
		if err != nil || typ2 != typ || id2 != id || from2 != from || !bytes.Equal(payload2, payload) {
			t.Fatalf("re-encoded envelope differs")
		}
	})
}

func TestSyncWith(t *testing.T) {
	n1 := startNode(t, testConfig(t, "n1"))
	n2 := startNode(t, testConfig(t, "n2", n1.addr()))
	waitFullMesh(t, converge, n1, n2)
	before := n1.app.merged("state-of-n2")
	if err := n1.SyncWith("n2"); err != nil {
		t.Fatalf("SyncWith a member: %v", err)
	}
	waitFor(t, converge, "n1 to merge the state of n2 again", func() bool { return n1.app.merged("state-of-n2") > before })
	if err := n1.SyncWith("n9"); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("SyncWith a stranger: %v, want ErrUnknownPeer", err)
	}
}
