package daemon

import (
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestDirectMessageSenderProven: the gossip delegate hands a key ack to
// the key rotation only when its MAC proves that the member named as its
// sender sent it. A member that writes another's name on its message, or
// sends no MAC (a weft before direct messages were signed), is refused.
func TestDirectMessageSenderProven(t *testing.T) {
	a := testAgent(t.TempDir(), "node1")
	a.key, a.kick = mustKey(t), make(chan struct{}, 1)
	next := mustKey(t)
	a.rot.begin(next, time.Now())
	node2, node3 := mustKey(t), mustKey(t)
	for name, k := range map[string]wgtypes.Key{"node2": node2, "node3": node3} {
		kp := &knownPeer{Alive: true}
		kp.Name, kp.PublicKey = name, k.PublicKey()
		a.peers[name] = kp
	}
	d := allocDelegate{log: a.log, key: a.handleKeyMsg, open: a.openDirect, refusals: &refusalLog{}}
	ack := next.PublicKey()
	acked := func(peer string) bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		_, ok := a.rot.acks[peer]
		return ok
	}

	// node3 acks in node2's name.
	forged, err := a.direct.seal(node3, a.key.PublicKey(), "node2", "node1", tagKeyAck, ack[:])
	if err != nil {
		t.Fatal(err)
	}
	d.NotifyMsg("node2", forged)
	d.NotifyMsg("node2", append([]byte{tagKeyAck}, ack[:]...))         // no MAC
	d.NotifyMsg("node2", append([]byte{tagUnsignedKeyAck}, ack[:]...)) // an older weft's
	if acked("node2") {
		t.Fatal("an ack in node2's name that node2 did not sign was taken")
	}

	genuine, err := a.direct.seal(node2, a.key.PublicKey(), "node2", "node1", tagKeyAck, ack[:])
	if err != nil {
		t.Fatal(err)
	}
	d.NotifyMsg("node2", genuine)
	if !acked("node2") {
		t.Fatal("node2's own signed ack was not taken")
	}

	// A member refused for its key is heard from no more.
	a.peers["node3"].KeyRefused = true
	own, err := a.direct.seal(node3, a.key.PublicKey(), "node3", "node1", tagKeyAck, ack[:])
	if err != nil {
		t.Fatal(err)
	}
	d.NotifyMsg("node3", own)
	if acked("node3") {
		t.Fatal("an ack from a member refused for its key was taken")
	}
}
