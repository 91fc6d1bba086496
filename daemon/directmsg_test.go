package daemon

import (
	"bytes"
	"errors"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestDirectMessageMAC: a direct message opens only for the pair of keys
// and the pair of names it was sealed for, with its body unchanged.
func TestDirectMessageMAC(t *testing.T) {
	var d directKeys
	a, b, rogue := mustKey(t), mustKey(t), mustKey(t)
	body := []byte(`{"v":1,"t":"donate?","id":7}`)
	msg, err := d.seal(a, b.PublicKey(), "node1", "node2", tagAllocMsg, body)
	if err != nil {
		t.Fatal(err)
	}
	if msg[0] != tagAllocMsg || len(msg) != 1+len(body)+directMACSize {
		t.Fatalf("sealed message %q: want the tag, the body and a %d-byte MAC", msg, directMACSize)
	}
	got, err := d.open([]wgtypes.Key{b}, []wgtypes.Key{a.PublicKey()}, "node1", "node2", msg)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("open = %q, %v; want the body", got, err)
	}

	forged, err := d.seal(rogue, b.PublicKey(), "node1", "node2", tagAllocMsg, body)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(msg)
	tampered[5] ^= 1
	retagged := bytes.Clone(msg)
	retagged[0] = tagKeyAck
	for _, c := range []struct {
		name     string
		msg      []byte
		from, to string
	}{
		{"sealed with another node's key, under node1's name", forged, "node1", "node2"},
		{"body changed", tampered, "node1", "node2"},
		{"tag changed", retagged, "node1", "node2"},
		{"another sender's name", msg, "node3", "node2"},
		{"another addressee's name", msg, "node1", "node3"},
	} {
		if _, err := d.open([]wgtypes.Key{b}, []wgtypes.Key{a.PublicKey()}, c.from, c.to, c.msg); !errors.Is(err, errDirectMAC) {
			t.Errorf("%s: open err = %v, want %v", c.name, err, errDirectMAC)
		}
	}
	if _, err := d.open([]wgtypes.Key{b}, []wgtypes.Key{a.PublicKey()}, "node1", "node2", msg[:directMACSize]); err == nil || errors.Is(err, errDirectMAC) {
		t.Errorf("short message: open err = %v, want a length error", err)
	}
}

// TestDirectMessageAcrossKeyRotation: while either end rotates its key, a
// message sealed with the keys one end has opens with the keys the other
// tries (its own current and pending keys, the sender's announced and
// next keys).
func TestDirectMessageAcrossKeyRotation(t *testing.T) {
	var d directKeys
	aOld, aNew, b, bNext := mustKey(t), mustKey(t), mustKey(t), mustKey(t)
	body := []byte("ack")

	// node1 has switched to its new key; node2 still lists the old one
	// as announced and the new one as next.
	msg, err := d.seal(aNew, b.PublicKey(), "node1", "node2", tagKeySwitched, body)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.open([]wgtypes.Key{b}, []wgtypes.Key{aOld.PublicKey(), aNew.PublicKey()}, "node1", "node2", msg); err != nil {
		t.Errorf("sender switched: %v", err)
	}
	// node2 rotates; node1 already addresses its next key.
	msg, err = d.seal(aOld, bNext.PublicKey(), "node1", "node2", tagAllocMsg, body)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.open([]wgtypes.Key{b, bNext}, []wgtypes.Key{aOld.PublicKey()}, "node1", "node2", msg); err != nil {
		t.Errorf("addressee's next key: %v", err)
	}
	// Without the pending key it does not open.
	if _, err := d.open([]wgtypes.Key{b}, []wgtypes.Key{aOld.PublicKey()}, "node1", "node2", msg); !errors.Is(err, errDirectMAC) {
		t.Errorf("addressee's next key not tried: err = %v, want %v", err, errDirectMAC)
	}
}

// FuzzOpenDirect: any bytes from a peer are refused or opened without a
// panic, and only a message with the right MAC opens.
func FuzzOpenDirect(f *testing.F) {
	var d directKeys
	a, b := mustKey(f), mustKey(f)
	good, err := d.seal(a, b.PublicKey(), "node1", "node2", tagAllocMsg, []byte("body"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{tagAllocMsg})
	f.Fuzz(func(t *testing.T, msg []byte) {
		body, err := d.open([]wgtypes.Key{b, {}}, []wgtypes.Key{a.PublicKey(), {}}, "node1", "node2", msg)
		if err == nil && !bytes.Equal(msg, good) {
			t.Fatalf("opened %q as %q: only the sealed message may open", msg, body)
		}
	})
}
