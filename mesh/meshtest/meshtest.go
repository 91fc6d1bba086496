// Package meshtest is an in-memory stand-in for mesh.Mesh, for tests of
// code that consumes membership events and carries application state
// (the daemon, the address allocator) without sockets or timers.
//
// A Network holds fake nodes. Each Node has the methods of mesh.Mesh that
// a consumer uses (Run, Events, Members, Local, SetMeta, Health,
// Broadcast, SendTo, SyncNow), so a consumer that depends on a small
// interface of its own accepts either. The test drives membership with
// Network.Join, Node.Leave and Node.Kill.
//
// Unlike the real mesh, everything is synchronous: events are queued
// before the call that caused them returns, and Broadcast, SendTo and
// SyncNow call the other nodes' AppDelegate in the caller's goroutine.
package meshtest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/weftnet/weft/mesh"
)

// EventBuffer is the capacity of each node's Events channel. A test that
// lets more events pile up without reading them blocks.
const EventBuffer = 1024

// Network is a set of fake nodes that see each other.
type Network struct {
	mu    sync.Mutex
	nodes map[string]*Node
	next  int // for gossip addresses
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{nodes: map[string]*Node{}}
}

// Node is one fake member.
type Node struct {
	net    *Network
	app    mesh.AppDelegate
	events chan mesh.Event

	mu      sync.Mutex // guards the fields below
	local   mesh.Peer
	gone    bool
	started bool
}

// Join adds a node named name with meta and the optional app delegate.
// It gets a Join event for every current node, and they one for it.
func (n *Network) Join(name string, meta mesh.Meta, app mesh.AppDelegate) (*Node, error) {
	if meta.Name == "" {
		meta.Name = name
	}
	if meta.Name != name {
		return nil, fmt.Errorf("meshtest: meta name %q is not node name %q", meta.Name, name)
	}
	if _, err := meta.Encode(); err != nil {
		return nil, fmt.Errorf("meshtest: %w", err)
	}
	meta.Proto = mesh.ProtoVersion
	n.mu.Lock()
	if _, ok := n.nodes[name]; ok {
		n.mu.Unlock()
		return nil, fmt.Errorf("meshtest: node %q already joined", name)
	}
	n.next++
	node := &Node{
		net:    n,
		app:    app,
		events: make(chan mesh.Event, EventBuffer),
		local: mesh.Peer{
			Name:  name,
			Addr:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(n.next)}), mesh.DefaultPort),
			Meta:  meta,
			State: mesh.StateAlive,
		},
	}
	others := n.othersLocked(name)
	n.nodes[name] = node
	n.mu.Unlock()

	for _, o := range others {
		node.events <- mesh.Event{Type: mesh.EventJoin, Peer: o.Local()}
		o.events <- mesh.Event{Type: mesh.EventJoin, Peer: node.Local()}
	}
	return node, nil
}

// othersLocked returns the nodes but name, sorted by name.
func (n *Network) othersLocked(name string) []*Node {
	var out []*Node
	for k, v := range n.nodes {
		if k != name {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b *Node) int { return strings.Compare(a.local.Name, b.local.Name) })
	return out
}

func (n *Network) others(name string) []*Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.othersLocked(name)
}

// remove takes node out and tells the others with a Leave in state st.
func (n *Network) remove(node *Node, st mesh.State) {
	n.mu.Lock()
	name := node.Local().Name
	if n.nodes[name] != node {
		n.mu.Unlock()
		return
	}
	delete(n.nodes, name)
	others := n.othersLocked(name)
	n.mu.Unlock()
	node.mu.Lock()
	node.gone = true
	node.local.State = st
	p := node.local
	node.mu.Unlock()
	for _, o := range others {
		o.events <- mesh.Event{Type: mesh.EventLeave, Peer: p}
	}
}

// Leave removes the node gracefully: the others get a Leave in StateLeft.
func (nd *Node) Leave() { nd.net.remove(nd, mesh.StateLeft) }

// Kill removes the node as if it died: the others get a Leave in
// StateDead.
func (nd *Node) Kill() { nd.net.remove(nd, mesh.StateDead) }

// Run blocks until ctx is done, then leaves and closes Events.
func (nd *Node) Run(ctx context.Context) error {
	nd.mu.Lock()
	if nd.started {
		nd.mu.Unlock()
		return errors.New("meshtest: Run called twice")
	}
	nd.started = true
	nd.mu.Unlock()
	<-ctx.Done()
	nd.Leave()
	close(nd.events)
	return nil
}

// Events returns the node's membership events.
func (nd *Node) Events() <-chan mesh.Event { return nd.events }

// Members returns the other nodes, sorted by name.
func (nd *Node) Members() []mesh.Peer {
	if nd.isGone() {
		return nil
	}
	var out []mesh.Peer
	for _, o := range nd.net.others(nd.Local().Name) {
		out = append(out, o.Local())
	}
	return out
}

// Local returns the node itself.
func (nd *Node) Local() mesh.Peer {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.local
}

func (nd *Node) isGone() bool {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.gone
}

// SetMeta changes the node's metadata; the others get an Update.
func (nd *Node) SetMeta(meta mesh.Meta) error {
	nd.mu.Lock()
	name := nd.local.Name
	nd.mu.Unlock()
	if meta.Name == "" {
		meta.Name = name
	}
	if meta.Name != name {
		return fmt.Errorf("set meta: name %q is not this node's name %q", meta.Name, name)
	}
	if _, err := meta.Encode(); err != nil {
		return fmt.Errorf("set meta: %w", err)
	}
	if nd.isGone() {
		return fmt.Errorf("set meta: %w", mesh.ErrClosed)
	}
	meta.Proto = mesh.ProtoVersion
	nd.mu.Lock()
	nd.local.Meta = meta
	p := nd.local
	nd.mu.Unlock()
	for _, o := range nd.net.others(name) {
		o.events <- mesh.Event{Type: mesh.EventUpdate, Peer: p}
	}
	return nil
}

// Health reports the number of members.
func (nd *Node) Health() mesh.Health {
	return mesh.Health{Members: len(nd.Members())}
}

// Broadcast calls NotifyMsg of every other node's delegate, now.
func (nd *Node) Broadcast(msg []byte) {
	if nd.isGone() {
		return
	}
	from := nd.Local().Name
	for _, o := range nd.net.others(from) {
		if o.app != nil {
			o.app.NotifyMsg(from, slices.Clone(msg))
		}
	}
}

// SendTo calls NotifyMsg of the named node's delegate, now.
func (nd *Node) SendTo(node string, msg []byte) error {
	if nd.isGone() {
		return fmt.Errorf("send to %s: %w", node, mesh.ErrClosed)
	}
	from := nd.Local().Name
	for _, o := range nd.net.others(from) {
		if o.Local().Name == node {
			if o.app != nil {
				o.app.NotifyMsg(from, slices.Clone(msg))
			}
			return nil
		}
	}
	return fmt.Errorf("send to %s: %w", node, mesh.ErrUnknownPeer)
}

// SyncNow exchanges application state with every other node (the real
// mesh picks one at random).
func (nd *Node) SyncNow() error {
	if nd.isGone() {
		return mesh.ErrClosed
	}
	if nd.app == nil {
		return nil
	}
	for _, o := range nd.net.others(nd.Local().Name) {
		if o.app == nil {
			continue
		}
		o.app.MergeRemoteState(slices.Clone(nd.app.LocalState()))
		nd.app.MergeRemoteState(slices.Clone(o.app.LocalState()))
	}
	return nil
}
