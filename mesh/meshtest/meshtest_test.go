package meshtest

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/weftnet/weft/mesh"
)

// membership is what a consumer might depend on; both types satisfy it.
type membership interface {
	Run(context.Context) error
	Events() <-chan mesh.Event
	Members() []mesh.Peer
	Local() mesh.Peer
	SetMeta(mesh.Meta) error
	Health() mesh.Health
	Broadcast([]byte)
	SendTo(string, []byte) error
	SyncNow() error
}

var (
	_ membership = (*mesh.Mesh)(nil)
	_ membership = (*Node)(nil)
)

type app struct {
	name string
	mu   sync.Mutex
	got  []string
}

func (a *app) LocalState() []byte { return []byte(a.name) }
func (a *app) MergeRemoteState(b []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = append(a.got, "state "+string(b))
}
func (a *app) NotifyMsg(from string, msg []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = append(a.got, from+": "+string(msg))
}
func (a *app) received() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

func next(t *testing.T, n *Node) mesh.Event {
	t.Helper()
	select {
	case ev := <-n.Events():
		return ev
	default:
		t.Fatalf("%s: no event", n.Local().Name)
		return mesh.Event{}
	}
}

func TestNetwork(t *testing.T) {
	net := NewNetwork()
	apps := map[string]*app{}
	join := func(name string) *Node {
		apps[name] = &app{name: name}
		n, err := net.Join(name, mesh.Meta{Endpoint: name + ":6784"}, apps[name])
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	a, b, c := join("a"), join("b"), join("c")
	if _, err := net.Join("a", mesh.Meta{}, nil); err == nil {
		t.Fatal("joined a second node named a")
	}

	for _, want := range []struct {
		n     *Node
		peers []string
	}{{a, []string{"b", "c"}}, {b, []string{"a", "c"}}, {c, []string{"a", "b"}}} {
		var got []string
		for range want.peers {
			ev := next(t, want.n)
			if ev.Type != mesh.EventJoin || ev.Peer.Meta.Endpoint != ev.Peer.Name+":6784" {
				t.Errorf("%s: event %+v", want.n.Local().Name, ev)
			}
			got = append(got, ev.Peer.Name)
		}
		slices.Sort(got)
		var members []string
		for _, p := range want.n.Members() {
			members = append(members, p.Name)
		}
		if !slices.Equal(got, want.peers) || !slices.Equal(members, want.peers) {
			t.Errorf("%s: joins %v, members %v, want %v", want.n.Local().Name, got, members, want.peers)
		}
	}

	if err := b.SetMeta(mesh.Meta{Endpoint: "new:1"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{a, c} {
		if ev := next(t, n); ev.Type != mesh.EventUpdate || ev.Peer.Meta.Endpoint != "new:1" {
			t.Errorf("%s: event %+v, want update of b", n.Local().Name, ev)
		}
	}

	a.Broadcast([]byte("hi"))
	if err := a.SendTo("c", []byte("psst")); err != nil {
		t.Fatal(err)
	}
	if err := a.SendTo("zz", nil); !errors.Is(err, mesh.ErrUnknownPeer) {
		t.Errorf("SendTo(zz) = %v", err)
	}
	if err := b.SyncNow(); err != nil {
		t.Fatal(err)
	}
	if got := apps["c"].received(); !slices.Equal(got, []string{"a: hi", "a: psst", "state b"}) {
		t.Errorf("c received %q", got)
	}
	if got := apps["b"].received(); !slices.Equal(got, []string{"a: hi", "state a", "state c"}) {
		t.Errorf("b received %q", got)
	}

	c.Kill()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- b.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, want := range []mesh.Event{
		{Type: mesh.EventLeave, Peer: mesh.Peer{Name: "c", State: mesh.StateDead}},
		{Type: mesh.EventLeave, Peer: mesh.Peer{Name: "b", State: mesh.StateLeft}},
	} {
		if ev := next(t, a); ev.Type != want.Type || ev.Peer.Name != want.Peer.Name || ev.Peer.State != want.Peer.State {
			t.Errorf("a: event %+v, want %+v", ev, want)
		}
	}
	if _, ok := <-b.Events(); ok {
		// b's queued events come first; drain until closed.
		for range b.Events() {
		}
	}
	if got := a.Health().Members; got != 0 {
		t.Errorf("a has %d members, want 0", got)
	}
}
