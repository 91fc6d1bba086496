package mesh

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// EventType says what happened to a peer.
type EventType uint8

const (
	// EventJoin: the peer is new to this node, or came back after a
	// Leave. A Join for a peer you already know replaces what you know.
	EventJoin EventType = iota + 1
	// EventUpdate: the peer's metadata or address changed.
	EventUpdate
	// EventLeave: the peer left gracefully (StateLeft: it announced its
	// leave), was declared dead (StateDead), or its metadata became
	// unreadable (StateAlive; it comes back with a Join once readable).
	// A Leave for a peer you do not know is a no-op.
	EventLeave
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	}
	return fmt.Sprintf("EventType(%d)", uint8(t))
}

// State is a peer's membership state.
//
//	        probe fails              suspicion times out
//	Alive ─────────────▶ Suspect ─────────────────────▶ Dead
//	  ▲ ╲                   │ refutes                     │
//	  │  ╲ Leave            ▼                             │ rejoins
//	  │   ╲──────▶ Left   Alive                           │
//	  └───────────────────────────────────────────────────┘
//
// memberlist reports no event when a peer becomes suspect, so peers in
// events and Members are Alive until they are Dead or Left.
type State uint8

const (
	StateAlive State = iota + 1
	StateSuspect
	StateDead
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Peer is another node of the mesh as this node sees it.
type Peer struct {
	Name string
	// Addr is the peer's gossip address.
	Addr  netip.AddrPort
	Meta  Meta
	State State
}

// Event reports a change of one peer. See Mesh.Events for the delivery
// guarantees.
type Event struct {
	Type EventType
	Peer Peer
}

func addrPortOf(n *memberlist.Node) netip.AddrPort {
	a, _ := netip.AddrFromSlice(n.Addr)
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}

// departed is a peer that was declared dead or left, kept for rejoin.
type departed struct {
	addr  netip.AddrPort
	since time.Time
}

// eventDelegate receives memberlist's membership callbacks. memberlist
// calls them one at a time, holding its node lock: they must not call
// back into memberlist and must not block.
type eventDelegate struct{ m *Mesh }

func (d eventDelegate) NotifyJoin(n *memberlist.Node)   { d.m.nodeAlive(n) }
func (d eventDelegate) NotifyUpdate(n *memberlist.Node) { d.m.nodeAlive(n) }
func (d eventDelegate) NotifyLeave(n *memberlist.Node)  { d.m.nodeGone(n) }

// nodeAlive handles a node that joined or changed.
func (m *Mesh) nodeAlive(n *memberlist.Node) {
	if n.Name == m.cfg.NodeName {
		return
	}
	p := Peer{Name: n.Name, Addr: addrPortOf(n), State: StateAlive}
	meta, err := DecodeMeta(n.Meta)

	m.mu.Lock()
	m.alive[n.Name] = p.Addr
	m.numNodes.Store(int32(len(m.alive) + 1))
	delete(m.departed, n.Name)
	if err != nil {
		raw := string(n.Meta)
		if bad, ok := m.badMeta[n.Name]; !ok || bad != raw {
			m.badMeta[n.Name] = raw
			m.log.Warn("ignoring peer with unreadable metadata until it sends a valid update", "peer", n.Name, "addr", p.Addr, "err", err)
		}
		old, known := m.peers[n.Name]
		delete(m.peers, n.Name)
		m.mu.Unlock()
		if known {
			m.queue.push(Event{Type: EventLeave, Peer: old})
		}
		return
	}
	delete(m.badMeta, n.Name)
	p.Meta = meta
	typ := EventUpdate
	if _, known := m.peers[n.Name]; !known {
		typ = EventJoin
	}
	m.peers[n.Name] = p
	m.mu.Unlock()
	m.queue.push(Event{Type: typ, Peer: p})
}

// nodeGone handles a node declared dead or that left.
func (m *Mesh) nodeGone(n *memberlist.Node) {
	if n.Name == m.cfg.NodeName {
		return
	}
	m.mu.Lock()
	delete(m.alive, n.Name)
	m.numNodes.Store(int32(len(m.alive) + 1))
	delete(m.badMeta, n.Name)
	m.departed[n.Name] = departed{addr: addrPortOf(n), since: time.Now()}
	// memberlist's Node.State is not maintained (its nodeState shadows
	// it), so whether the node left or died comes from its announcement.
	state := StateDead
	if t, ok := m.leaving[n.Name]; ok && time.Since(t) < leavingTTL {
		state = StateLeft
	}
	delete(m.leaving, n.Name)
	p, known := m.peers[n.Name]
	delete(m.peers, n.Name)
	m.mu.Unlock()
	if known {
		p.State = state
		p.Addr = addrPortOf(n)
		m.queue.push(Event{Type: EventLeave, Peer: p})
	}
}

// eventQueue holds events not yet taken by the consumer, at most one per
// peer: a newer event for a peer replaces the pending one (a Join followed
// by an Update stays a Join with the newer data). It never blocks the
// producer and its size is bounded by the number of peers.
type eventQueue struct {
	wake chan struct{} // capacity 1: something was pushed

	mu      sync.Mutex
	order   []string         // peers with a pending event, oldest first
	pending map[string]Event // by peer name
	merged  uint64           // events replaced before delivery
}

func newEventQueue() *eventQueue {
	return &eventQueue{wake: make(chan struct{}, 1), pending: map[string]Event{}}
}

func (q *eventQueue) push(ev Event) {
	q.mu.Lock()
	name := ev.Peer.Name
	if old, ok := q.pending[name]; ok {
		if old.Type == EventJoin && ev.Type == EventUpdate {
			ev.Type = EventJoin
		}
		q.merged++
	} else {
		q.order = append(q.order, name)
	}
	q.pending[name] = ev
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) pop() (Event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) > 0 {
		name := q.order[0]
		q.order[0] = ""
		q.order = q.order[1:]
		if ev, ok := q.pending[name]; ok {
			delete(q.pending, name)
			return ev, true
		}
	}
	return Event{}, false
}

// pumpEvents moves events from the queue to the events channel until ctx
// is done.
func (m *Mesh) pumpEvents(ctx context.Context) {
	for {
		ev, ok := m.queue.pop()
		if !ok {
			select {
			case <-m.queue.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case m.events <- ev:
		case <-ctx.Done():
			return
		}
	}
}
