// Package ipalloctest runs a cluster of real allocators in one process: an
// in-memory Transport, gossip on demand, partitions and node deaths, for
// the tests of ipalloc and of its users.
//
// Delivery is synchronous: Send and a broadcast call the receiver's
// HandleMessage or MergeRemote before returning (the allocator never calls
// them while holding its own lock, so this cannot deadlock).
package ipalloctest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/ipalloc"
)

// ErrUnreachable is what Send returns for a peer that is down or across a partition.
var ErrUnreachable = errors.New("peer unreachable")

// Network is a set of allocators that can reach each other unless
// partitioned or stopped. Its methods are safe for concurrent use.
type Network struct {
	mu    sync.Mutex
	nodes map[string]*node
	cfgs  map[string]ipalloc.Config // of every node ever added, for Restart
	group map[string]int            // partition group of each node; same group talks
	drop  func(from, to string) bool
	// silent peers: a send to one blocks for hang, whatever its context
	// says, then fails, as a TCP dial to a host that drops packets does.
	silent func(from, to string) bool
	hang   time.Duration
	sends  map[[2]string]int // sends attempted, by from and to
}

// node is one allocator of the network.
type node struct {
	Name  string
	Alloc *ipalloc.Allocator
	stop  context.CancelFunc
	done  chan error
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{nodes: map[string]*node{}, cfgs: map[string]ipalloc.Config{}, group: map[string]int{}, sends: map[[2]string]int{}}
}

// Add starts an allocator with cfg, its Transport, Peers and Broadcast
// wired to the network (RequestTimeout defaults to 2s, Logger to a
// discarding one). It is stopped and closed when the test ends.
func (n *Network) Add(t testing.TB, cfg ipalloc.Config) *ipalloc.Allocator {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	self := cfg.Self
	cfg.Transport = transport{n, self}
	cfg.Peers = func() []string { return n.Reachable(self) }
	cfg.Broadcast = func(data []byte) { n.broadcast(self, data) }
	a, err := ipalloc.New(cfg)
	if err != nil {
		t.Fatalf("start allocator %s: %v", self, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	nd := &node{Name: self, Alloc: a, stop: cancel, done: make(chan error, 1)}
	go func() { nd.done <- a.Run(ctx) }()
	n.mu.Lock()
	n.nodes[self] = nd
	n.cfgs[self] = cfg
	n.mu.Unlock()
	t.Cleanup(func() { n.Stop(self) })
	return a
}

// Restart stops the node (if running) and starts it again from its state
// directory, as a daemon restart does.
func (n *Network) Restart(t testing.TB, name string) *ipalloc.Allocator {
	t.Helper()
	n.mu.Lock()
	cfg, ok := n.cfgs[name]
	n.mu.Unlock()
	if !ok {
		t.Fatalf("restart %s: no such node", name)
	}
	n.Stop(name)
	cfg.Transport, cfg.Peers, cfg.Broadcast = nil, nil, nil
	return n.Add(t, cfg)
}

// Stop ends a node: its Run returns, its state file is closed, and it
// disappears from everyone's live peers. Its state directory stays.
func (n *Network) Stop(name string) {
	n.mu.Lock()
	nd := n.nodes[name]
	delete(n.nodes, name)
	n.mu.Unlock()
	if nd == nil {
		return
	}
	nd.stop()
	<-nd.done
	nd.Alloc.Close()
}

// Partition splits the network into groups that cannot reach each other;
// nodes not named form one more group.
func (n *Network) Partition(groups ...[]string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.group = map[string]int{}
	for i, g := range groups {
		for _, name := range g {
			n.group[name] = i + 1
		}
	}
}

// SetDrop installs a filter asked about every message and ring delivered
// (true drops it); nil delivers everything again.
func (n *Network) SetDrop(drop func(from, to string) bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.drop = drop
}

// SetSilent makes the sends for which silent is true block for hang,
// ignoring their context, and then fail with ErrUnreachable: a peer whose
// packets are dropped rather than refused. nil ends it.
func (n *Network) SetSilent(silent func(from, to string) bool, hang time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.silent, n.hang = silent, hang
}

// Sends returns how many sends from asked to (messages of the allocators:
// donation requests and answers) were attempted, delivered or not.
func (n *Network) Sends(from, to string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sends[[2]string{from, to}]
}

// Heal ends every partition.
func (n *Network) Heal() { n.Partition() }

// Nodes returns the names of the running nodes, sorted.
func (n *Network) Nodes() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for name := range n.nodes {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// Alloc returns the allocator of a running node, nil if none.
func (n *Network) Alloc(name string) *ipalloc.Allocator {
	n.mu.Lock()
	defer n.mu.Unlock()
	if nd := n.nodes[name]; nd != nil {
		return nd.Alloc
	}
	return nil
}

// Reachable returns the running nodes self can reach, itself included: its
// live members.
func (n *Network) Reachable(self string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for name := range n.nodes {
		if n.group[name] == n.group[self] {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func (n *Network) target(from, to string) *node {
	n.mu.Lock()
	defer n.mu.Unlock()
	nd := n.nodes[to]
	if nd == nil || n.group[from] != n.group[to] {
		return nil
	}
	if n.drop != nil && n.drop(from, to) {
		return nil
	}
	return nd
}

func (n *Network) broadcast(from string, data []byte) {
	for _, to := range n.Reachable(from) {
		if to == from {
			continue
		}
		if nd := n.target(from, to); nd != nil {
			nd.Alloc.MergeRemote(data)
		}
	}
}

// Gossip makes every pair of nodes that can reach each other exchange their
// rings once (memberlist's push/pull). It returns the errors of the merges,
// joined.
func (n *Network) Gossip() error {
	var errs []error
	for _, from := range n.Nodes() {
		for _, to := range n.Nodes() {
			if from == to {
				continue
			}
			if err := n.GossipPair(from, to); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// GossipPair makes to merge the ring of from, if from can reach it.
func (n *Network) GossipPair(from, to string) error {
	src, dst := n.Alloc(from), n.target(from, to)
	if src == nil || dst == nil || from == to {
		return nil
	}
	if err := dst.Alloc.MergeRemote(src.LocalState()); err != nil {
		return fmt.Errorf("%s -> %s: %w", from, to, err)
	}
	return nil
}

type transport struct {
	n    *Network
	self string
}

// Send delivers msg to peer's HandleMessage, or fails with ErrUnreachable.
func (t transport) Send(ctx context.Context, peer string, msg []byte) error {
	t.n.mu.Lock()
	t.n.sends[[2]string{t.self, peer}]++
	silent, hang := t.n.silent != nil && t.n.silent(t.self, peer), t.n.hang
	t.n.mu.Unlock()
	if silent {
		time.Sleep(hang)
		return fmt.Errorf("send to %s: %w (no answer in %s)", peer, ErrUnreachable, hang)
	}
	nd := t.n.target(t.self, peer)
	if nd == nil {
		return fmt.Errorf("send to %s: %w", peer, ErrUnreachable)
	}
	return nd.Alloc.HandleMessage(t.self, msg)
}
