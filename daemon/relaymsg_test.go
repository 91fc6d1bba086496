package daemon

import (
	"reflect"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func relayTestKeys(t testing.TB) (a, b, c wgtypes.Key) {
	t.Helper()
	for _, k := range []*wgtypes.Key{&a, &b, &c} {
		var err error
		if *k, err = wgtypes.GeneratePrivateKey(); err != nil {
			t.Fatal(err)
		}
	}
	return a, b, c
}

func TestRelayMsgRoundTrip(t *testing.T) {
	ka, kb, kc := relayTestKeys(t)
	send, err := relayMACKey(ka, kb.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	recv, _ := relayMACKey(kb, ka.PublicKey())
	if send != recv {
		t.Fatal("the two ends derive different keys")
	}
	other, _ := relayMACKey(kb, kc.PublicKey())
	msgs := []relayMsg{
		{Kind: kindReport, ID: 1, Epoch: 1 << 60, To: "b", Names: []string{"n1", "n2"}},
		{Kind: kindReport, ID: 2, Epoch: 3, To: "b", Names: []string{}},
		{Kind: kindPropose, ID: 3, Epoch: 9, To: "b", A: "a", B: "z"},
		{Kind: kindAck, ID: 4, Epoch: 3, To: "b", Names: []string{}},
	}
	for _, m := range msgs {
		wire := encodeRelayMsg(m, "a", send)
		if to, err := relayMsgTo(wire); err != nil || to != "b" {
			t.Errorf("%s: addressee %q, %v", kindName(m.Kind), to, err)
		}
		got, err := decodeRelayMsg(wire, "a", recv)
		if err != nil {
			t.Fatalf("%s: %v", kindName(m.Kind), err)
		}
		if m.Names == nil {
			m.Names = []string{}
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("decoded %+v, want %+v", got, m)
		}
		// Claimed by another sender, or checked with another pair's key:
		// refused.
		if _, err := decodeRelayMsg(wire, "c", recv); err == nil {
			t.Errorf("%s: accepted under another sender's name", kindName(m.Kind))
		}
		if _, err := decodeRelayMsg(wire, "a", other); err == nil {
			t.Errorf("%s: accepted with another pair's key", kindName(m.Kind))
		}
		for i := range wire {
			bad := append([]byte(nil), wire...)
			bad[i] ^= 0x40
			if _, err := decodeRelayMsg(bad, "a", recv); err == nil {
				t.Errorf("%s: accepted with byte %d changed", kindName(m.Kind), i)
			}
		}
	}
}

func FuzzDecodeRelayMsg(f *testing.F) {
	ka, kb, _ := relayTestKeys(f)
	key, _ := relayMACKey(ka, kb.PublicKey())
	f.Add(encodeRelayMsg(relayMsg{Kind: kindReport, To: "b", Names: []string{"x"}}, "a", key))
	f.Add(encodeRelayMsg(relayMsg{Kind: kindConfirm, To: "b", A: "a", B: "b"}, "a", key))
	f.Add([]byte{relayMsgVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = relayMsgTo(b)
		m, err := decodeRelayMsg(b, "a", key)
		if err != nil {
			return
		}
		// What decodes encodes back to the same bytes.
		if again := encodeRelayMsg(m, "a", key); string(again) != string(b) {
			t.Errorf("re-encoded %x, read %x", again, b)
		}
	})
}
