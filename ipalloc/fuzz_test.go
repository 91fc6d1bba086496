package ipalloc_test

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/ipalloc"
)

// FuzzHandleMessage: any message from a peer is taken or refused with an
// error, never a panic, and the allocator keeps working.
func FuzzHandleMessage(f *testing.F) {
	a, err := ipalloc.New(ipalloc.Config{Self: "a", CIDR: netip.MustParsePrefix("10.0.0.0/24"), Seed: []string{"a", "b"}, StateDir: f.TempDir(), Logger: quiet()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { a.Close() })
	b, err := ipalloc.New(ipalloc.Config{Self: "b", CIDR: netip.MustParsePrefix("10.0.0.0/24"), Seed: []string{"a", "b"}, StateDir: f.TempDir(), Logger: quiet()})
	if err != nil {
		f.Fatal(err)
	}
	ring := b.LocalState()
	b.Close()
	answer, _ := json.Marshal(map[string]any{"v": 1, "t": "donate!", "id": 1, "ring": ring})
	f.Add([]byte(`{"v":1,"t":"donate?","id":7}`))
	f.Add(answer)
	f.Add([]byte(`{"v":1,"t":"donate!","id":7,"reason":"none"}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		a.HandleMessage("b", msg)
		a.MergeRemote(msg)
		if st := a.Status(nil); st.Range.String() != "10.0.0.0/24" {
			t.Fatalf("status after a message: %+v", st)
		}
	})
}

func TestSeededAfterJoiningTheSeedList(t *testing.T) {
	dir := t.TempDir()
	a := open(t, dir, "a", "10.0.0.0/24")
	if ok, _ := a.Ready(); ok {
		t.Fatal("ready with no genesis")
	}
	a.Close()
	a = open(t, dir, "a", "10.0.0.0/24", "a")
	defer a.Close()
	if addr := mustAlloc(t, a, key(1)); !addr.IsValid() {
		t.Fatal("no address")
	}
}
