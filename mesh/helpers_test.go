package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// testTimings shortens the timings so tests detect failures in about a
// second. FailureDetectionTime(3) = (3×1 + 3) × 200 ms = 1.2 s.
func testTimings(c *Config) {
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 100 * time.Millisecond
	c.SuspicionMult = 3
	c.GossipInterval = 50 * time.Millisecond
	c.PushPullInterval = 2 * time.Second
	c.DeadNodeReclaimTime = time.Second
	c.TCPTimeout = time.Second
	c.JoinBackoffMin = 50 * time.Millisecond
	c.JoinBackoffMax = 400 * time.Millisecond
	c.RejoinInterval = 300 * time.Millisecond
}

var testGossipKey = bytes.Repeat([]byte{0x42}, KeySize)

// syncBuffer collects a node's logs; they are printed if the test fails.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// node is a Mesh under test, running until the test ends.
type node struct {
	*Mesh
	logs   *syncBuffer
	app    *recordingApp
	cancel context.CancelFunc
	done   chan error // Run's result
	evDone chan struct{}

	mu     sync.Mutex
	events []Event
}

func testConfig(t testing.TB, name string, seeds ...string) Config {
	t.Helper()
	c := DefaultConfig()
	testTimings(&c)
	c.NodeName = name
	c.BindAddr = "127.0.0.1"
	c.BindPort = 0
	c.Key = testGossipKey
	c.Seeds = seeds
	c.Meta = Meta{Endpoint: "127.0.0.1:6784", PublicKey: testKey(byte(len(name)))}
	return c
}

// newNode creates a mesh with cfg (logs captured) without running it.
func newNode(t testing.TB, cfg Config) *node {
	t.Helper()
	n := &node{logs: &syncBuffer{}, app: &recordingApp{name: cfg.NodeName}}
	cfg.Logger = slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.Delegate == nil {
		cfg.Delegate = n.app
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.NodeName, err)
	}
	n.Mesh = m
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			t.Logf("logs of %s:\n%s", cfg.NodeName, n.logs.String())
		}
	})
	return n
}

// run starts Run and a goroutine recording events.
func (n *node) run(t testing.TB) *node {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.done = make(chan error, 1)
	n.evDone = make(chan struct{})
	go func() { n.done <- n.Run(ctx) }()
	go func() {
		defer close(n.evDone)
		for ev := range n.Events() {
			n.mu.Lock()
			n.events = append(n.events, ev)
			n.mu.Unlock()
		}
	}()
	return n
}

// startNode creates and runs a node.
func startNode(t testing.TB, cfg Config) *node {
	t.Helper()
	return newNode(t, cfg).run(t)
}

// stop cancels Run and waits for it and the event reader; idempotent.
func (n *node) stop(t testing.TB) {
	t.Helper()
	if n.cancel == nil {
		_ = n.Close()
		return
	}
	n.cancel()
	select {
	case err, ok := <-n.done:
		if ok && err != nil {
			t.Errorf("Run(%s) = %v", n.cfg.NodeName, err)
		}
		close(n.done)
	case <-time.After(10 * time.Second):
		t.Fatalf("Run(%s) did not return 10s after cancel", n.cfg.NodeName)
	}
	<-n.evDone
	n.cancel = nil
}

func (n *node) addr() string { return n.local.String() }

// eventsFor returns the events recorded about peer.
func (n *node) eventsFor(peer string) []Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []Event
	for _, ev := range n.events {
		if ev.Peer.Name == peer {
			out = append(out, ev)
		}
	}
	return out
}

// lastEvent returns the last event about peer, if any.
func (n *node) lastEvent(peer string) (Event, bool) {
	evs := n.eventsFor(peer)
	if len(evs) == 0 {
		return Event{}, false
	}
	return evs[len(evs)-1], true
}

func (n *node) memberNames() []string {
	var names []string
	for _, p := range n.Members() {
		names = append(names, p.Name)
	}
	return names
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFullMesh waits until every node lists every other node as member
// and has seen a Join event for it.
func waitFullMesh(t testing.TB, timeout time.Duration, nodes ...*node) {
	t.Helper()
	waitFor(t, timeout, "full membership", func() bool {
		for _, n := range nodes {
			var want []string
			for _, o := range nodes {
				if o != n {
					want = append(want, o.cfg.NodeName)
				}
			}
			slices.Sort(want)
			if !slices.Equal(n.memberNames(), want) {
				return false
			}
			for _, name := range want {
				if ev, ok := n.lastEvent(name); !ok || ev.Type == EventLeave {
					return false
				}
			}
		}
		return true
	})
}

// freePort reserves a TCP and UDP port on 127.0.0.1 and releases it.
func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// recordingApp is an AppDelegate that records what it receives.
type recordingApp struct {
	name string

	mu     sync.Mutex
	states map[string]int // remote state → times merged
	msgs   []string       // "from: msg"
	synced atomic.Int64
}

func (a *recordingApp) LocalState() []byte { return []byte("state-of-" + a.name) }

func (a *recordingApp) MergeRemoteState(data []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.states == nil {
		a.states = map[string]int{}
	}
	a.states[string(data)]++
	a.synced.Add(1)
}

func (a *recordingApp) NotifyMsg(from string, msg []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.msgs = append(a.msgs, from+": "+string(msg))
}

func (a *recordingApp) merged(state string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.states[state]
}

func (a *recordingApp) received(entry string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, m := range a.msgs {
		if m == entry {
			n++
		}
	}
	return n
}

// partition drops traffic between groups of nodes while cut.
type partition struct {
	mu    sync.Mutex
	group map[string]int // gossip address → group
	cut   bool
}

func (p *partition) set(cut bool, groups ...[]*node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	p.group = map[string]int{}
	for i, g := range groups {
		for _, n := range g {
			p.group[n.addr()] = i
		}
	}
}

func (p *partition) blocked(from, to string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut && p.group[from] != p.group[to]
}

func (p *partition) wrap(tr memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
	return &cutTransport{NodeAwareTransport: tr, drop: p.blocked}
}

// cutTransport drops packets and refuses dials that drop says cross a cut
// (across the partition, or into a NAT).
type cutTransport struct {
	memberlist.NodeAwareTransport
	drop func(from, to string) bool // by gossip address
	self atomic.Value               // string: own advertised address
}

var errPartitioned = errors.New("partitioned by test")

func (c *cutTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	a, p, err := c.NodeAwareTransport.FinalAdvertiseAddr(ip, port)
	if err == nil {
		addr, _ := netip.AddrFromSlice(a)
		c.self.Store(netip.AddrPortFrom(addr.Unmap(), uint16(p)).String())
	}
	return a, p, err
}

func (c *cutTransport) blocked(to string) bool {
	self, _ := c.self.Load().(string)
	return c.drop(self, strings.TrimSpace(to))
}

func (c *cutTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if c.blocked(addr) {
		return time.Now(), nil
	}
	return c.NodeAwareTransport.WriteTo(b, addr)
}

func (c *cutTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if c.blocked(a.Addr) {
		return time.Now(), nil
	}
	return c.NodeAwareTransport.WriteToAddress(b, a)
}

func (c *cutTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if c.blocked(addr) {
		return nil, errPartitioned
	}
	return c.NodeAwareTransport.DialTimeout(addr, timeout)
}

func (c *cutTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if c.blocked(a.Addr) {
		return nil, errPartitioned
	}
	return c.NodeAwareTransport.DialAddressTimeout(a, timeout)
}
