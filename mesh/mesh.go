// Package mesh is weft's membership layer: which nodes are in the
// cluster, how to reach them and what they announce (WireGuard key,
// endpoint, overlay address).
//
// It wraps hashicorp/memberlist (SWIM gossip over TCP and UDP on the
// underlay, port 6783 by default). Gossip is encrypted and authenticated
// with a key derived from the cluster secret; a node with another key is
// never admitted. A node joins its seeds with exponential backoff and
// periodically tries again the seeds that are not members and the last
// addresses of members that died or left, so a healed partition of the
// underlay merges again by itself.
//
// The mesh reports peers joining, changing and leaving as Events, and
// carries opaque application state and messages for the address allocator
// (AppDelegate, Broadcast, SendTo).
package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// gossipLabel is prefixed to every packet and stream so weft ignores other
// memberlist-based software that happens to reach its port.
const gossipLabel = "weft"

const (
	// leaveTimeout bounds how long Run waits for its leave message to go
	// out when it stops.
	leaveTimeout = 2 * time.Second
	// updateTimeout bounds how long SetMeta waits for the update to be
	// gossiped; it is sent later anyway.
	updateTimeout = time.Second
	// rejoinDeparted is how many departed members are tried per rejoin.
	rejoinDeparted = 3
	// eventBuffer is the capacity of the Events channel.
	eventBuffer = 64
)

// Mesh is this node's membership in the cluster. Create it with New, then
// call Run.
type Mesh struct {
	cfg   Config
	log   *slog.Logger
	ml    *memberlist.Memberlist
	local netip.AddrPort // advertised gossip address
	seeds []string       // cfg.Seeds without this node's own address

	queue  *eventQueue
	events chan Event
	bcast  *memberlist.TransmitLimitedQueue
	large  chan []byte // envelopes of large broadcasts, sent by sendLarge

	numNodes          atomic.Int32 // alive nodes including this one, for retransmit limits
	droppedBroadcasts atomic.Uint64
	joinAttempts      atomic.Uint64
	started           atomic.Bool
	closed            atomic.Bool

	closeMu sync.RWMutex // write-held while shutting memberlist down

	// detour carries gossip to the members Config.Detour names; nil
	// without one.
	detour *detourTransport

	// keyring holds the gossip keys (nil: insecure); memberlist encrypts
	// with its primary key and accepts any of them. See SetKeys.
	keyring *memberlist.Keyring

	mu        sync.Mutex // guards the fields below
	meta      Meta
	metaBytes []byte
	peers     map[string]Peer           // reported peers: alive, readable metadata
	alive     map[string]netip.AddrPort // every alive or suspect node but this one
	badMeta   map[string]string         // node → unreadable metadata already logged
	departed  map[string]departed       // dead or left nodes, for rejoin
	leaving   map[string]time.Time      // nodes that announced their leave

	seenMu sync.Mutex
	seen   map[uint64]time.Time // broadcast ids already delivered
}

// Health summarizes the mesh for health checks and metrics.
type Health struct {
	// Members is the number of peers in Members (this node excluded).
	Members int
	// Score is memberlist's awareness score: 0 is healthy, higher means
	// this node is missing its probe deadlines (overloaded or cut off).
	Score int
	// DroppedBroadcasts counts broadcasts dropped because queues were
	// full or messages too large.
	DroppedBroadcasts uint64
	// CoalescedEvents counts events replaced by a newer event for the
	// same peer before the consumer took them.
	CoalescedEvents uint64
}

// New creates the node's memberlist, bound and listening but not joined to
// anyone; Run joins. It fails when the configuration is invalid or the
// port cannot be bound.
func New(cfg Config) (*Mesh, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	metaBytes, err := cfg.Meta.Encode()
	if err != nil {
		return nil, fmt.Errorf("mesh config: %w", err)
	}
	m := &Mesh{
		cfg:       cfg,
		log:       cfg.Logger,
		queue:     newEventQueue(),
		events:    make(chan Event, eventBuffer),
		large:     make(chan []byte, largeQueueMax),
		meta:      cfg.Meta,
		metaBytes: metaBytes,
		peers:     map[string]Peer{},
		alive:     map[string]netip.AddrPort{},
		badMeta:   map[string]string{},
		departed:  map[string]departed{},
		leaving:   map[string]time.Time{},
		seen:      map[uint64]time.Time{},
	}
	m.meta.Proto = ProtoVersion
	m.numNodes.Store(1)
	// Each node that has a gossiped message sends it in RetransmitMult x
	// log10(members) packets to random members. With 4, one member in
	// eight missed a broadcast about once in eight runs of
	// TestBroadcastReachesEveryone; 6 missed none in 40.
	m.bcast = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(m.numNodes.Load()) },
		RetransmitMult: 6,
	}

	mc, tr, err := m.memberlistConfig()
	if err != nil {
		return nil, err
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		_ = tr.Shutdown()
		return nil, fmt.Errorf("start gossip on %s:%d: %w", cfg.BindAddr, mc.BindPort, err)
	}
	m.ml = ml
	m.local = addrPortOf(ml.LocalNode())
	for _, s := range cfg.Seeds {
		if ap, ok := seedAddrPort(s); ok && ap == m.local {
			continue
		}
		m.seeds = append(m.seeds, s)
	}
	return m, nil
}

// memberlistConfig translates m.cfg and binds the transport.
func (m *Mesh) memberlistConfig() (*memberlist.Config, memberlist.NodeAwareTransport, error) {
	cfg := m.cfg
	mlLog := newMemberlistLogger(cfg.Logger)
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.BindAddr = cfg.BindAddr
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.SuspicionMaxTimeoutMult = cfg.SuspicionMaxTimeoutMult
	mc.GossipInterval = cfg.GossipInterval
	mc.PushPullInterval = cfg.PushPullInterval
	mc.DeadNodeReclaimTime = cfg.DeadNodeReclaimTime
	mc.TCPTimeout = cfg.TCPTimeout
	if len(cfg.Key) > 0 {
		kr, err := memberlist.NewKeyring(nil, slices.Clone(cfg.Key))
		if err != nil {
			return nil, nil, fmt.Errorf("gossip key: %w", err)
		}
		mc.Keyring = kr
		m.keyring = kr
	}
	// memberlist's LZW compression allocates a fresh 16 KiB table for
	// every packet it sends: at hundreds of members that was a fifth of
	// the CPU and most of the garbage while a cluster converged
	// (BenchmarkConvergence), for a few hundred bytes saved on packets
	// that fit a datagram anyway. Peers still read compressed messages,
	// so older nodes interoperate.
	mc.EnableCompression = false
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.Label = gossipLabel
	mc.Delegate = delegate{m}
	mc.DelegateProtocolVersion = ProtoVersion
	mc.DelegateProtocolMin = ProtoVersion
	mc.DelegateProtocolMax = ProtoVersion
	mc.Events = eventDelegate{m}
	mc.Logger = mlLog

	if cfg.Transport != nil {
		mc.BindPort = 0
		mc.AdvertisePort = cfg.AdvertisePort
		mc.Transport = cfg.Transport
		return mc, cfg.Transport, nil
	}
	// Bind the transport here rather than in memberlist, so tests can
	// wrap it and port 0 works.
	var nt *memberlist.NetTransport
	var err error
	for range 10 {
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{cfg.BindAddr},
			BindPort:  cfg.BindPort,
			Logger:    mlLog,
		})
		if err == nil || cfg.BindPort != 0 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("listen for gossip on %s port %d (TCP and UDP): %w; is another weft daemon running?", cfg.BindAddr, cfg.BindPort, err)
	}
	mc.BindPort = nt.GetAutoBindPort()
	mc.AdvertisePort = cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = mc.BindPort
	}
	var tr memberlist.NodeAwareTransport = nt
	if cfg.wrapTransport != nil {
		tr = cfg.wrapTransport(tr)
	}
	if cfg.Detour != nil {
		m.detour = newDetourTransport(tr, cfg.Detour, mc.BindPort, m.log.With("lib", "memberlist"))
		tr = m.detour
	}
	mc.Transport = tr
	if m.detour != nil {
		return mc, m.detour, nil
	}
	return mc, nt, nil
}

// ListenDetour makes this node take gossip at addr, on its gossip port, for
// the peers whose Config.Detour names it, and send its own detoured gossip
// from there; an invalid addr stops that (detoured gossip then takes the
// underlay). Without Config.Detour it does nothing.
func (m *Mesh) ListenDetour(addr netip.Addr) error {
	if m.detour == nil {
		return nil
	}
	return m.detour.listen(addr)
}

// Run joins the seeds, retrying with backoff until one answers, then keeps
// rejoining lost members every RejoinInterval until ctx is done. Then it
// leaves the cluster gracefully (peers see StateLeft), shuts the
// memberlist down, closes the Events channel and returns nil, after every
// goroutine it started has ended. Stopping may take up to TCPTimeout
// while a join attempt is under way. Run may be called once.
func (m *Mesh) Run(ctx context.Context) error {
	if !m.started.CompareAndSwap(false, true) {
		return errors.New("mesh: Run called twice")
	}
	if m.closed.Load() {
		close(m.events)
		return fmt.Errorf("mesh: Run after Close: %w", ErrClosed)
	}
	defer close(m.events)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { m.pumpEvents(ctx) })
	wg.Go(func() { m.sendLarge(ctx) })

	if via := m.joinSeeds(ctx); via != "" {
		wg.Go(func() { m.catchUp(ctx, via) })
	}
	t := time.NewTicker(m.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			m.shutdown(true)
			return nil
		case <-t.C:
			m.rejoin(ctx)
		}
	}
}

// Close shuts the memberlist down without leaving. It is for a Mesh whose
// Run was never called; Run does this itself. Close is idempotent.
func (m *Mesh) Close() error {
	m.shutdown(false)
	return nil
}

func (m *Mesh) shutdown(leave bool) {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.closed.Swap(true) {
		return
	}
	if leave {
		m.announceLeave()
		if err := m.ml.Leave(leaveTimeout); err != nil {
			m.log.Warn("leaving the mesh: peers will notice by probing", "err", err)
		} else {
			m.log.Info("left the mesh")
		}
	}
	if err := m.ml.Shutdown(); err != nil {
		m.log.Warn("shutting down gossip", "err", err)
	}
}

// joinSeeds tries the seeds with exponential backoff until one answers,
// another node has joined this one, or ctx is done. It returns the seed
// that answered last, "" if none did.
func (m *Mesh) joinSeeds(ctx context.Context) string {
	if len(m.seeds) == 0 {
		m.log.Info("no seeds to join; waiting for other nodes to join this one", "addr", m.local)
		return ""
	}
	backoff := m.cfg.JoinBackoffMin
	var lastWarn time.Time
	for attempt := 1; ; attempt++ {
		// Seeds in random order, and a few of them only: with the
		// Kubernetes Node list every other node is a seed, and a whole
		// cluster starting at once must neither queue at the first one
		// nor pull the full state from each.
		seeds := slices.Clone(m.seeds)
		rand.Shuffle(len(seeds), func(i, j int) { seeds[i], seeds[j] = seeds[j], seeds[i] })
		n, via, err := m.joinEach(ctx, seeds, joinFanout)
		if n > 0 {
			m.log.Info("joined the mesh", "seeds", m.seeds, "contacted", n, "members", m.numNodes.Load())
			return via
		}
		if m.numNodes.Load() > 1 {
			m.log.Info("joined the mesh through a node that contacted this one", "members", m.numNodes.Load())
			return ""
		}
		if ctx.Err() != nil {
			return ""
		}
		mismatch := err != nil && isKeyMismatch(err.Error())
		switch {
		case attempt == 1 && !mismatch:
			lastWarn = time.Now()
			m.log.Info("no seed answered yet; retrying", "seeds", m.seeds, "err", err)
		case time.Since(lastWarn) >= time.Minute:
			lastWarn = time.Now()
			args := []any{"seeds", m.seeds, "attempts", attempt, "err", err}
			if mismatch {
				args = append(args, "hint", joinKeyHint)
			}
			m.log.Warn("cannot join any seed; retrying", args...)
		}
		// Full jitter: a seed that refused joins because too many came at
		// once (memberlist takes 128 at a time) sees the retries spread
		// out, not in a second wave.
		wait := time.Duration(float64(backoff) * (0.1 + 0.9*rand.Float64()))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ""
		}
		backoff = min(2*backoff, m.cfg.JoinBackoffMax)
	}
}

// joinFanout is how many seeds a starting node joins (when it has that
// many): one is enough to get the whole state; a few more survive a seed
// that is itself still joining or on the wrong side of a partition.
const joinFanout = 3

// joinEach joins the targets one at a time, stopping early when ctx is
// done or enough (0: all) answered, and returns how many answered, the
// last that did and the errors of the others.
func (m *Mesh) joinEach(ctx context.Context, targets []string, enough int) (int, string, error) {
	n, last := 0, ""
	var errs []error
	for _, t := range targets {
		if ctx.Err() != nil || (enough > 0 && n >= enough) {
			break
		}
		m.joinAttempts.Add(1)
		if _, err := m.join(t); err != nil {
			errs = append(errs, flatten(err))
			continue
		}
		n, last = n+1, t
	}
	return n, last, errors.Join(errs...)
}

// flatten turns memberlist's multierror of one join into a one-line error.
func flatten(err error) error {
	var me interface{ WrappedErrors() []error }
	if errors.As(err, &me) && len(me.WrappedErrors()) == 1 {
		return me.WrappedErrors()[0]
	}
	return err
}

// join joins one address unless the mesh is shut down.
func (m *Mesh) join(addr string) (int, error) {
	m.closeMu.RLock()
	defer m.closeMu.RUnlock()
	if m.closed.Load() {
		return 0, ErrClosed
	}
	return m.ml.Join([]string{addr})
}

// rejoin tries the seeds that are not members and a few departed members.
func (m *Mesh) rejoin(ctx context.Context) {
	targets := m.rejoinTargets(ctx)
	if len(targets) == 0 {
		return
	}
	before := m.numNodes.Load()
	n, _, err := m.joinEach(ctx, targets, 0)
	if after := m.numNodes.Load(); n > 0 && after > before {
		m.log.Info("rejoined members", "via", targets, "members", after)
	} else {
		m.log.Debug("rejoin attempt", "targets", targets, "answered", n, "err", err)
	}
}

func (m *Mesh) rejoinTargets(ctx context.Context) []string {
	now := time.Now()
	members := map[netip.AddrPort]bool{m.local: true}
	var deps []string
	m.mu.Lock()
	for _, ap := range m.alive {
		members[ap] = true
	}
	for name, d := range m.departed {
		if now.Sub(d.since) > m.cfg.ForgetDepartedAfter {
			delete(m.departed, name)
			continue
		}
		if !members[d.addr] {
			deps = append(deps, d.addr.String())
		}
	}
	m.mu.Unlock()
	rand.Shuffle(len(deps), func(i, j int) { deps[i], deps[j] = deps[j], deps[i] })
	targets := deps[:min(len(deps), rejoinDeparted)]
	for _, s := range m.seeds {
		if !m.seedIsMember(ctx, s, members) {
			targets = append(targets, s)
		}
	}
	return targets
}

// seedIsMember reports whether seed resolves to a current member.
func (m *Mesh) seedIsMember(ctx context.Context, seed string, members map[netip.AddrPort]bool) bool {
	if ap, ok := seedAddrPort(seed); ok {
		return members[ap]
	}
	host, portStr, err := net.SplitHostPort(seed)
	if err != nil {
		return false
	}
	port, err := net.LookupPort("tcp", portStr)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if members[netip.AddrPortFrom(a.Unmap(), uint16(port))] {
			return true
		}
	}
	return false
}

// Events returns the channel of membership changes of peers (never this
// node), in the order memberlist reported them for each peer. The mesh
// never blocks memberlist on a slow consumer and never drops an event:
// undelivered events wait in a queue holding at most one event per peer,
// where a newer event replaces an older one (Join then Update stays a
// Join; anything then Leave is a Leave; Leave then Join is a Join). So
// treat a Join of a known peer as a replacement and a Leave of an unknown
// peer as a no-op, and the consumer's view always converges to Members.
// The channel is closed when Run returns.
func (m *Mesh) Events() <-chan Event { return m.events }

// Members returns the alive peers with readable metadata, this node
// excluded, sorted by name. Suspect peers are included (as StateAlive,
// since memberlist does not report suspicion).
func (m *Mesh) Members() []Peer {
	m.mu.Lock()
	out := make([]Peer, 0, len(m.peers))
	for _, p := range m.peers {
		out = append(out, p)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Member returns the alive peer of that name with readable metadata, as
// Members would list it.
func (m *Mesh) Member(name string) (Peer, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.peers[name]
	return p, ok
}

// Local returns this node as its peers see it.
func (m *Mesh) Local() Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := StateAlive
	if m.closed.Load() {
		st = StateLeft
	}
	return Peer{Name: m.cfg.NodeName, Addr: m.local, Meta: m.meta, State: st}
}

// SetMeta replaces this node's metadata and gossips it; peers get an
// Update event. An empty Name is filled in. It fails if meta does not
// encode or names another node.
func (m *Mesh) SetMeta(meta Meta) error {
	if meta.Name == "" {
		meta.Name = m.cfg.NodeName
	}
	if meta.Name != m.cfg.NodeName {
		return fmt.Errorf("set meta: name %q is not this node's name %q", meta.Name, m.cfg.NodeName)
	}
	b, err := meta.Encode()
	if err != nil {
		return fmt.Errorf("set meta: %w", err)
	}
	meta.Proto = ProtoVersion
	m.mu.Lock()
	m.meta, m.metaBytes = meta, b
	m.mu.Unlock()

	m.closeMu.RLock()
	defer m.closeMu.RUnlock()
	if m.closed.Load() {
		return fmt.Errorf("set meta: %w", ErrClosed)
	}
	if err := m.ml.UpdateNode(updateTimeout); err != nil {
		// The update is queued and goes out with the next gossip.
		m.log.Debug("metadata update not gossiped yet", "err", err)
	}
	return nil
}

// Health returns the mesh's health counters.
func (m *Mesh) Health() Health {
	m.mu.Lock()
	n := len(m.peers)
	m.mu.Unlock()
	m.queue.mu.Lock()
	merged := m.queue.merged
	m.queue.mu.Unlock()
	return Health{
		Members:           n,
		Score:             m.ml.GetHealthScore(),
		DroppedBroadcasts: m.droppedBroadcasts.Load(),
		CoalescedEvents:   merged,
	}
}

// Join tries to join the nodes at addrs ("host" or "host:port") that are
// not members yet, for seeds learned while running (new Kubernetes Nodes).
// It returns how many answered; none answering is not an error of its own.
// It blocks for at most TCPTimeout per address.
func (m *Mesh) Join(ctx context.Context, addrs []string) (int, error) {
	targets, err := normalizeSeeds(addrs)
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	members := map[string]bool{m.local.String(): true}
	for _, ap := range m.alive {
		members[ap.String()] = true
	}
	m.mu.Unlock()
	var todo []string
	for _, t := range targets {
		if !members[t] {
			todo = append(todo, t)
		}
	}
	if len(todo) == 0 {
		return 0, nil
	}
	n, _, err := m.joinEach(ctx, todo, 0)
	return n, err
}
