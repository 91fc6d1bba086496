// Package ipalloc gives each pod of this node one address of the pod range,
// with no address ever handed out twice in the cluster.
//
// The range is split among nodes by the CRDT ring of package ring, gossiped
// by the daemon (LocalState, MergeRemote, Broadcast). Each node hands out
// addresses only from the spans it owns; a node that runs out asks the peer
// with the most free addresses for a share (donation); `weft rmpeer` takes
// back a dead node's spans (reclaim). Allocations and the ring are kept in a
// bbolt file under Config.StateDir, written and fsynced before an address is
// returned.
//
// When a node may allocate:
//
//	start ──► ring from the state file, or the genesis, or unseeded
//	            │
//	            ├─ unseeded (not in the seed list) ─────────► wait for a whole ring from a peer
//	            ├─ heard a whole ring from a live peer since start ──► ready
//	            ├─ no other owner in the ring, no other live member ─► ready
//	            └─ otherwise ───────────────────────────────► wait for a whole ring from a peer
//
// A restarted node may hold stale state: while it was away its spans may
// have been reclaimed. It therefore serves nothing, not even the address of
// an existing allocation, until it has merged the whole ring (not a delta)
// of a live peer, which carries the higher versions of the reclaim; it then
// drops what it lost. Remaining risks: the one peer it hears first is
// itself stale (the whole cluster restarts from old disks at once), or the
// node starts alone before the mesh has joined although others exist (its
// state directory was wiped and it was the only node of its genesis).
//
// Dual stack: the ring is over the IPv4 range and each of its addresses
// comes with one IPv6 address of Config.PairCIDR (see pair.go).
//
// Gossip: LocalState is the whole ring, for push/pull; after a donation or
// a reclaim the allocator hands Config.Broadcast a delta of the ring (only
// the spans that changed), small enough for one gossip packet.
//
// Reclaim. Rmpeer labels the dead node's spans with a claim one version up.
// Concurrent claims of the same span resolve to the smaller claimant
// everywhere, and a transfer the dead node made that the claimant had not
// heard of beats the claim. The claimant allocates from a claimed span only
// once every live peer (Config.Peers) has sent back a ring still holding its
// claim: a live peer that knew a winning label would have shown it instead,
// and a peer that has merged the claim can no longer claim that span itself
// (it no longer belongs to the dead node). Remaining risk: a node that was
// unreachable during the reclaim and holds a label that beats the claim (the
// dead node gave it the span just before dying and nobody else heard of it);
// reclaim only nodes that are really gone, after the mesh has settled.
//
// Concurrency: every method is safe for concurrent use; one mutex guards the
// allocator's state and is never held while a message is sent. Run serves
// donation requests from other nodes; donation rounds of this node and the
// sends of its messages run in goroutines of their own (seek.go), so no
// caller waits on a peer longer than its context allows.
package ipalloc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/weftnet/weft/ipalloc/ring"
)

// ErrDifferentGenesis is returned by MergeRemote for a ring seeded by
// another genesis; the daemon logs it and shows it in status.
var ErrDifferentGenesis = ring.ErrDifferentGenesis

// ErrFull: the whole pod range has no free address.
var ErrFull = errors.New("pod range is full")

// ErrNoSpace: this node has no free address yet (no range, or waiting for
// a donation or for the ring from a peer); the caller should retry.
var ErrNoSpace = errors.New("no address space on this node yet")

type fullError struct{ cidr netip.Prefix }

func (e fullError) Error() string { return fmt.Sprintf("pod range %s is full", e.cidr) }
func (e fullError) Unwrap() error { return ErrFull }

type noSpaceError struct{ why string }

func (e noSpaceError) Error() string { return e.why + "; retry in a few seconds" }
func (e noSpaceError) Unwrap() error { return ErrNoSpace }

// Key names one interface of one container: the allocation key.
type Key struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (k Key) String() string { return k.ContainerID + "/" + k.IfName }

// Allocation is one address handed out, with what the caller stored with it
// (pod namespace and name, netns path).
type Allocation struct {
	Key
	Addr netip.Addr `json:"addr"`
	// Addr6 is the IPv6 address that comes with Addr in a dual-stack
	// cluster (see Config.PairCIDR); not stored, derived from Addr.
	Addr6   netip.Addr        `json:"addr6,omitzero"`
	Meta    map[string]string `json:"meta,omitempty"`
	Created time.Time         `json:"created"`
}

// Transport carries the allocator's messages to one peer. Send may be
// called from several goroutines at once; msg is owned by the transport
// after the call.
type Transport interface {
	Send(ctx context.Context, peer string, msg []byte) error
}

// Config of an Allocator.
type Config struct {
	Self string // this node's name; required
	// CIDR is the pod range; required. IPv4, or IPv6 for an IPv6-only
	// cluster: the ring then spans the range's first /96 at most.
	CIDR netip.Prefix
	// PairCIDR, for a dual-stack cluster, is the IPv6 pod range beside the
	// IPv4 CIDR: each address of CIDR comes with the address at the same
	// offset of PairCIDR (pair.go). It must hold at least as many
	// addresses as CIDR. Zero: one family only.
	PairCIDR  netip.Prefix
	Seed      []string  // the genesis seed list; this node seeds the ring only when it is in it
	StateDir  string    // directory of the state file (StateFile); required
	Transport Transport // carries donation requests; nil: no donation
	// Peers returns the names of the live members (this node may be among
	// them); nil: no peers. It is called without the allocator's lock
	// held, from any goroutine, and must not call back into the allocator.
	Peers func() []string
	// Broadcast, if set, is called (outside any lock) after a local change
	// every node must hear of soon (a donation given, a reclaim) with a
	// delta of the ring: a few dozen bytes, small enough for one gossip
	// packet, to be handed to MergeRemote on every other node. It must not
	// block; the slice is the callee's.
	Broadcast      func(ring []byte)
	Logger         *slog.Logger     // default slog.Default()
	RequestTimeout time.Duration    // how long to wait for a donation before asking another peer; default 2s, well under the CNI plugin's 5 s so one ADD can try two peers
	Now            func() time.Time // default time.Now
}

// Allocator hands out addresses of this node's share of the pod range.
type Allocator struct {
	cfg     Config
	log     *slog.Logger
	store   *store
	changes chan struct{}
	inbox   chan inbound

	mu          sync.Mutex
	ring        *ring.Ring
	allocs      map[Key]*Allocation
	writing     map[Key]*allocWrite // new allocations not on disk yet
	byOff       map[uint64]Key      // offsets in the ring of allocated addresses
	claims      []*pendingClaim
	usable      []ring.Span  // own spans minus pending claims and reserved addresses
	free        uint64       // free addresses in usable
	synced      bool         // merged a whole ring from a live peer since start
	lost        map[Key]bool // allocations whose address another node owns now, already logged
	refused     string       // the last ring refused for its genesis
	refusedAt   time.Time
	cursor      uint64
	nextID      uint64
	lastRecvErr time.Time

	// Donation rounds (seek.go).
	waiting map[uint64]chan bool // donation requests in flight, by id
	sending map[string]int       // sends not returned yet, by peer
	silent  map[string]time.Time // peers that did not answer a donation request, and when
	seeking bool                 // a round is running
	seekErr error                // why the last round gave nothing; nil if it gave space
	rounds  uint64               // rounds ended
	spaceCh chan struct{}        // closed when space may have appeared or a round ended

	// Background work: donation rounds, their sends, answers to requests.
	bgCtx  context.Context
	bgStop context.CancelFunc
	bg     sync.WaitGroup
}

type pendingClaim struct {
	storedClaim
	acks map[string]bool
}

func (c *pendingClaim) span() ring.Span { return ring.Span{Start: c.Start, End: c.End} }
func (c *pendingClaim) label() ring.Label {
	return ring.Label{Version: c.Version, Kind: c.Kind, Owner: c.Owner}
}

// New opens (or creates) the state under cfg.StateDir. A state file that is
// corrupt, written by a newer weft, or for another pod range stops New with
// an error saying what to do; it is never reset silently.
func New(cfg Config) (*Allocator, error) {
	if cfg.Self == "" || len(cfg.Self) > ring.MaxNameLen {
		return nil, fmt.Errorf("ipalloc: node name %q: want 1 to %d bytes", cfg.Self, ring.MaxNameLen)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("ipalloc: no state directory")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Peers == nil {
		cfg.Peers = func() []string { return nil }
	}
	cfg.CIDR = ringRange(cfg.CIDR)
	fresh, err := ring.NewEmpty(cfg.CIDR)
	if err != nil {
		return nil, fmt.Errorf("ipalloc: %w", err)
	}
	cfg.CIDR = fresh.Prefix()
	if err := checkPair(cfg.CIDR, cfg.PairCIDR); err != nil {
		return nil, err
	}
	cfg.PairCIDR = cfg.PairCIDR.Masked()
	if slices.Contains(cfg.Seed, cfg.Self) {
		if fresh, err = ring.NewGenesis(cfg.CIDR, cfg.Seed); err != nil {
			return nil, fmt.Errorf("ipalloc: %w", err)
		}
	}
	st, l, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a := &Allocator{
		cfg:     cfg,
		log:     cfg.Logger,
		store:   st,
		changes: make(chan struct{}, 1),
		inbox:   make(chan inbound, 64),
		allocs:  map[Key]*Allocation{},
		byOff:   map[uint64]Key{},
		writing: map[Key]*allocWrite{},
		waiting: map[uint64]chan bool{},
		sending: map[string]int{},
		silent:  map[string]time.Time{},
		spaceCh: make(chan struct{}),
		lost:    map[Key]bool{},
		ring:    l.ring,
	}
	a.bgCtx, a.bgStop = context.WithCancel(context.Background())
	if err := a.load(l, fresh); err != nil {
		st.close()
		return nil, err
	}
	return a, nil
}

func (a *Allocator) load(l loaded, fresh *ring.Ring) error {
	if a.ring == nil {
		a.ring = fresh
		a.log.Info("new IPAM state", "cidr", a.cfg.CIDR, "seeded", fresh.Seeded(), "genesis", fresh.Genesis())
		if err := a.saveRingLocked(); err != nil {
			return err
		}
		if a.cfg.PairCIDR.IsValid() {
			if err := a.store.savePair(a.cfg.PairCIDR); err != nil {
				return err
			}
		}
	} else {
		if a.ring.Prefix() != a.cfg.CIDR {
			return fmt.Errorf("IPAM state file %s was written for pod range %s, but the pod range is now %s: "+
				"set --pod-cidr %s, or move the file away to start empty "+
				"(addresses of the pods running on this node may then be handed out again)",
				a.store.path, a.ring.Prefix(), a.cfg.CIDR, a.ring.Prefix())
		}
		if err := a.checkStoredPair(l.pair); err != nil {
			return err
		}
		if fresh.Seeded() && !a.ring.Seeded() {
			// Now in the seed list, and never seeded before: take the genesis.
			if _, err := a.ring.Merge(fresh); err != nil {
				return fmt.Errorf("seed the ring from the genesis: %w", err)
			}
			if err := a.saveRingLocked(); err != nil {
				return err
			}
		}
		if fresh.Seeded() && a.ring.Seeded() && fresh.Genesis() != a.ring.Genesis() {
			a.log.Warn("the seed list differs from the genesis in the state file; keeping the state file's",
				"file", a.store.path, "genesis", a.ring.Genesis())
		}
	}
	for _, al := range l.allocs {
		off, ok := a.ring.Offset(al.Addr)
		if !ok {
			return corrupt(a.store.path, fmt.Errorf("allocation %v: address %s outside the pod range", al.Key, al.Addr))
		}
		if other, dup := a.byOff[off]; dup {
			return corrupt(a.store.path, fmt.Errorf("address %s allocated to both %v and %v", al.Addr, other, al.Key))
		}
		al := al
		a.allocs[al.Key] = &al
		a.byOff[off] = al.Key
		a.cursor = max(a.cursor, off+1) // do not reuse released addresses at once
	}
	for _, c := range l.claims {
		a.claims = append(a.claims, &pendingClaim{storedClaim: c, acks: map[string]bool{}})
	}
	a.recompute()
	return nil
}

// aloneInRing reports whether no node but this one owns any address.
func (a *Allocator) aloneInRing() bool {
	for _, o := range a.ring.Owners() {
		if o != a.cfg.Self {
			return false
		}
	}
	return true
}

// Close stops what the allocator does in the background and releases the
// state file. Call it after Run has returned.
func (a *Allocator) Close() error {
	a.stopBackground()
	return a.store.close()
}

// stopBackground ends the donation rounds and sends in flight and waits
// for them; a send blocked in the transport is waited for too.
func (a *Allocator) stopBackground() {
	a.bgStop()
	a.bg.Wait()
}

// Run serves donation requests from other nodes and checks pending claims
// until ctx ends; then it stops the donation rounds in flight.
func (a *Allocator) Run(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	defer a.stopBackground()
	for {
		select {
		case <-ctx.Done():
			return nil
		case in := <-a.inbox:
			a.serveDonation(in)
		case <-tick.C:
			live := a.livePeers()
			a.mu.Lock()
			changed := a.checkClaims(live)
			a.mu.Unlock()
			if changed {
				a.signal()
			}
		}
	}
}

// Changes signals (coalesced) that the ownership of some addresses
// changed: re-read Ranges and reconcile routes and WireGuard peers.
func (a *Allocator) Changes() <-chan struct{} { return a.changes }

func (a *Allocator) signal() {
	select {
	case a.changes <- struct{}{}:
	default:
	}
}

// livePeers returns the live members but this node.
func (a *Allocator) livePeers() []string {
	var out []string
	for _, p := range a.cfg.Peers() {
		if p != a.cfg.Self {
			out = append(out, p)
		}
	}
	return out
}
