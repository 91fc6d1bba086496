package mesh

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
)

// AppDelegate is the application riding on the mesh (the address
// allocator). The mesh only carries its bytes.
//
// All methods are called from memberlist's goroutines, possibly several
// at once, and must be safe for that; they must return quickly (hand work
// to your own goroutine), since a slow NotifyMsg stalls gossip. Byte
// slices passed to the delegate are its own after the call; the slice
// returned by LocalState belongs to the mesh and must not be changed
// afterwards.
type AppDelegate interface {
	// LocalState returns the application state to send to a peer during
	// a push/pull (a join, or every PushPullInterval).
	LocalState() []byte
	// MergeRemoteState receives the LocalState of a peer.
	MergeRemoteState(data []byte)
	// NotifyMsg receives a message sent by node from with Broadcast or
	// SendTo.
	NotifyMsg(from string, msg []byte)
}

// Message envelopes. The first byte is the type:
//
//	msgBroadcast: type, 8-byte random id, uvarint name length, name, payload
//	msgDirect:    type, uvarint name length, name, payload
//	msgLeaving:   type, uvarint name length, name
//
// Broadcasts are gossiped and relayed once by every node that sees them
// first (deduplicated by id); direct messages are not relayed.
// msgLeaving is sent by a node to every peer right before it leaves, so
// they can tell a graceful leave from a death: memberlist's callbacks do
// not say which.
// Application state in push/pull is prefixed with stateV1.
const (
	msgBroadcast = 1
	msgDirect    = 2
	msgLeaving   = 3
	stateV1      = 1
)

// Limits and tunables of the message path.
const (
	// maxGossipEnvelope is the largest envelope sent by gossip: the UDP
	// packet (1400 bytes) minus memberlist's compound, label, encryption
	// and user message overheads, with slack.
	maxGossipEnvelope = 1300
	// MaxMessageSize is the largest message Broadcast and SendTo accept.
	MaxMessageSize = 16 << 20
	// broadcastQueueMax bounds the gossip queue; beyond it the oldest
	// broadcasts are dropped (and counted in Health).
	broadcastQueueMax = 4096
	// largeQueueMax bounds the large broadcasts waiting to be sent by TCP.
	largeQueueMax = 64
	// seenTTL is how long a broadcast id is remembered for deduplication;
	// gossip retransmits end within seconds.
	seenTTL = 2 * time.Minute
	seenMax = 1 << 16
	// leavingTTL is how long a leave announcement waits for memberlist's
	// leave.
	leavingTTL = time.Minute
)

// ErrUnknownPeer is returned by SendTo for a node that is not an alive
// member.
var ErrUnknownPeer = errors.New("unknown or dead peer")

// ErrClosed is returned after the mesh has shut down.
var ErrClosed = errors.New("mesh is shut down")

func appendEnvelopeHeader(buf []byte, typ byte, id uint64, from string) []byte {
	buf = append(buf, typ)
	if typ == msgBroadcast {
		buf = binary.BigEndian.AppendUint64(buf, id)
	}
	buf = binary.AppendUvarint(buf, uint64(len(from)))
	return append(buf, from...)
}

// parseEnvelope splits a message; payload aliases buf.
func parseEnvelope(buf []byte) (typ byte, id uint64, from string, payload []byte, err error) {
	if len(buf) == 0 {
		return 0, 0, "", nil, errors.New("empty message")
	}
	typ, buf = buf[0], buf[1:]
	switch typ {
	case msgBroadcast:
		if len(buf) < 8 {
			return 0, 0, "", nil, errors.New("short broadcast header")
		}
		id, buf = binary.BigEndian.Uint64(buf), buf[8:]
	case msgDirect, msgLeaving:
	default:
		return 0, 0, "", nil, fmt.Errorf("unknown message type %d (a newer weft?)", typ)
	}
	n, k := binary.Uvarint(buf)
	if k <= 0 || n > uint64(len(buf)-k) {
		return 0, 0, "", nil, errors.New("bad sender name length")
	}
	from = string(buf[k : k+int(n)])
	return typ, id, from, buf[k+int(n):], nil
}

// appBroadcast is one message in the gossip queue.
type appBroadcast struct{ msg []byte }

func (b *appBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *appBroadcast) Message() []byte                       { return b.msg }
func (b *appBroadcast) Finished()                             {}
func (b *appBroadcast) UniqueBroadcast()                      {}

// delegate implements memberlist.Delegate.
type delegate struct{ m *Mesh }

func (d delegate) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	if len(d.m.metaBytes) > limit {
		return nil // cannot happen: Encode enforces MaxMetaSize
	}
	return d.m.metaBytes
}

func (d delegate) NotifyMsg(buf []byte) {
	m := d.m
	typ, id, from, payload, err := parseEnvelope(buf)
	if err != nil {
		m.log.Debug("dropping malformed message", "err", err)
		return
	}
	switch typ {
	case msgLeaving:
		m.noteLeaving(from)
		return
	case msgBroadcast:
		if !m.markSeen(id) {
			return
		}
		m.enqueueGossip(append([]byte(nil), buf...))
	}
	if app := m.cfg.Delegate; app != nil && from != m.cfg.NodeName {
		app.NotifyMsg(from, append([]byte(nil), payload...))
	}
}

func (d delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.m.bcast.GetBroadcasts(overhead, limit)
}

func (d delegate) LocalState(join bool) []byte {
	app := d.m.cfg.Delegate
	if app == nil {
		return nil
	}
	s := app.LocalState()
	out := make([]byte, 0, 1+len(s))
	return append(append(out, stateV1), s...)
}

func (d delegate) MergeRemoteState(buf []byte, join bool) {
	app := d.m.cfg.Delegate
	if app == nil || len(buf) == 0 {
		return
	}
	if buf[0] != stateV1 {
		d.m.log.Debug("ignoring application state in an unknown format (a newer weft?)", "format", buf[0])
		return
	}
	app.MergeRemoteState(append([]byte(nil), buf[1:]...))
}

// noteLeaving records that a peer announced its leave.
func (m *Mesh) noteLeaving(name string) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for n, t := range m.leaving {
		if now.Sub(t) > leavingTTL {
			delete(m.leaving, n)
		}
	}
	m.leaving[name] = now
}

// announceLeave tells every alive peer, best effort, that this node is
// about to leave.
func (m *Mesh) announceLeave() {
	env := appendEnvelopeHeader(nil, msgLeaving, 0, m.cfg.NodeName)
	for _, p := range m.alivePeers() {
		if err := m.ml.SendBestEffort(p, env); err != nil {
			m.log.Debug("announcing leave", "peer", p.Name, "err", err)
		}
	}
}

// markSeen records a broadcast id and reports whether it is new.
func (m *Mesh) markSeen(id uint64) bool {
	m.seenMu.Lock()
	defer m.seenMu.Unlock()
	if _, ok := m.seen[id]; ok {
		return false
	}
	now := time.Now()
	if len(m.seen) >= seenMax {
		for k, t := range m.seen {
			if now.Sub(t) > seenTTL {
				delete(m.seen, k)
			}
		}
		if len(m.seen) >= seenMax {
			clear(m.seen)
		}
	}
	m.seen[id] = now
	return true
}

func (m *Mesh) enqueueGossip(env []byte) {
	m.bcast.QueueBroadcast(&appBroadcast{msg: env})
	if n := m.bcast.NumQueued(); n > broadcastQueueMax {
		m.bcast.Prune(broadcastQueueMax)
		m.droppedBroadcasts.Add(uint64(n - broadcastQueueMax))
	}
}

// Broadcast delivers msg to every alive member, best effort, without
// blocking. A small message (the envelope fits a UDP packet, about 1250
// bytes of payload) is gossiped: sent to random members, and relayed once
// by each member that receives it, so it reaches all members in a few
// gossip intervals unless the network loses many packets. A larger
// message is sent over TCP to each alive member, in order, by a goroutine
// of Run; when more than 64 are waiting the newest is dropped. Drops are
// counted in Health. Messages are not delivered to this node, and nothing
// is sent after Run has returned. Push/pull of the application state is
// the repair for anything lost.
func (m *Mesh) Broadcast(msg []byte) {
	if len(msg) > MaxMessageSize {
		m.log.Warn("not broadcasting oversized message", "bytes", len(msg), "max", MaxMessageSize)
		m.droppedBroadcasts.Add(1)
		return
	}
	id := rand.Uint64()
	env := appendEnvelopeHeader(make([]byte, 0, 32+len(m.cfg.NodeName)+len(msg)), msgBroadcast, id, m.cfg.NodeName)
	if len(env)+len(msg) <= maxGossipEnvelope {
		m.markSeen(id)
		m.enqueueGossip(append(env, msg...))
		return
	}
	env = appendEnvelopeHeader(env[:0], msgDirect, 0, m.cfg.NodeName)
	select {
	case m.large <- append(env, msg...):
	default:
		m.droppedBroadcasts.Add(1)
		m.log.Warn("large broadcast queue full; dropping message", "bytes", len(msg))
	}
}

// sendLarge sends queued large broadcasts until ctx is done.
func (m *Mesh) sendLarge(ctx context.Context) {
	for {
		select {
		case env := <-m.large:
			for _, p := range m.alivePeers() {
				if ctx.Err() != nil {
					return
				}
				if err := m.ml.SendReliable(p, env); err != nil {
					m.log.Debug("large broadcast to peer failed", "peer", p.Name, "err", err)
				}
			}
		case <-ctx.Done():
			return
		}
	}
}

// SendTo sends msg to the named member over TCP. It blocks until msg is
// written, at most TCPTimeout, and fails with ErrUnknownPeer when node is
// not an alive member.
func (m *Mesh) SendTo(node string, msg []byte) error {
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("send to %s: message of %d bytes exceeds %d", node, len(msg), MaxMessageSize)
	}
	if m.closed.Load() {
		return fmt.Errorf("send to %s: %w", node, ErrClosed)
	}
	m.mu.Lock()
	ap, ok := m.alive[node]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("send to %s: %w", node, ErrUnknownPeer)
	}
	env := appendEnvelopeHeader(make([]byte, 0, 16+len(m.cfg.NodeName)+len(msg)), msgDirect, 0, m.cfg.NodeName)
	if err := m.ml.SendReliable(nodeAt(node, ap), append(env, msg...)); err != nil {
		return fmt.Errorf("send to %s at %s: %w", node, ap, err)
	}
	return nil
}

// SyncNow does a push/pull (membership and application state, both ways)
// with one random alive member now, instead of waiting for the next
// PushPullInterval. It blocks for at most TCPTimeout; with no members it
// does nothing.
func (m *Mesh) SyncNow() error {
	if m.closed.Load() {
		return ErrClosed
	}
	peers := m.alivePeers()
	if len(peers) == 0 {
		return nil
	}
	p := peers[rand.IntN(len(peers))]
	if _, err := m.join(p.Address()); err != nil {
		return fmt.Errorf("sync with %s: %w", p.Name, err)
	}
	return nil
}

// SyncWith does a push/pull with the alive member name now. A node behind
// NAT, whom others cannot send to, learns so at once that it is suspected
// and refutes it before it is declared dead. It blocks for at most
// TCPTimeout.
func (m *Mesh) SyncWith(name string) error {
	if m.closed.Load() {
		return ErrClosed
	}
	m.mu.Lock()
	ap, ok := m.alive[name]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("sync with %s: %w", name, ErrUnknownPeer)
	}
	if _, err := m.join(ap.String()); err != nil {
		return fmt.Errorf("sync with %s: %w", name, err)
	}
	return nil
}

// alivePeers returns the alive members other than this node, whatever
// their metadata, as memberlist nodes to send to.
func (m *Mesh) alivePeers() []*memberlist.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*memberlist.Node, 0, len(m.alive))
	for name, ap := range m.alive {
		out = append(out, nodeAt(name, ap))
	}
	return out
}

func nodeAt(name string, ap netip.AddrPort) *memberlist.Node {
	return &memberlist.Node{Name: name, Addr: net.IP(ap.Addr().AsSlice()), Port: ap.Port()}
}
