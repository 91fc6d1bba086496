package daemon

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// tagRelaySignal marks relay signalling messages on the mesh, beside the
// allocator's tags.
const tagRelaySignal byte = 'L'

// relaySignallerConfig wires the relay protocol to the node.
type relaySignallerConfig struct {
	Self    string
	Private wgtypes.Key // this node's WireGuard key at start; setPrivate changes it
	// PublicKey returns the vetted public key of a live member, false for a
	// node that is not one (or whose key is refused). Called without the
	// signaller's lock held.
	PublicKey func(name string) (wgtypes.Key, bool)
	// Broadcast gossips a message to every node; it must not block.
	Broadcast func([]byte)
	// Direct sends a message to the node to through the tunnel, best
	// effort, if its direct path may work; nil: never. Each message goes
	// both ways: gossip reaches the ends of a cut pair, the tunnel a node
	// behind NAT, which gossip from outside its site does not reach.
	Direct func(to string, msg []byte)
	// OnChange is called (from Run) when the relay of a pair changed.
	OnChange func()
	// Accept reports whether this node forwards for the pair; nil: it does.
	Accept   func(a, b string) bool
	Log      *slog.Logger
	Protocol relaySignalConfig // zero: defaultRelaySignalConfig
	Tick     time.Duration     // how often retries are due at most; 0: 100 ms
}

// relaySignaller runs the relay protocol (relaySignal) for the node: it
// authenticates the messages that arrive, sends what the protocol says,
// and tells the reconcile loop when a relay changed. update and relays may
// be called from any goroutine, receive from memberlist's.
type relaySignaller struct {
	cfg relaySignallerConfig
	in  chan inboundRelayMsg

	keysMu  sync.Mutex
	private wgtypes.Key              // this node's key, which signs its messages
	keys    map[wgtypes.Key][32]byte // MAC keys by peer key, derived from private

	mu     sync.Mutex // guards the fields below; never held while calling out
	st     *relaySignal
	relays map[string]string // the relay of each cut pair, by the other end
}

type inboundRelayMsg struct {
	from string
	m    relayMsg
}

func newRelaySignaller(cfg relaySignallerConfig) *relaySignaller {
	if cfg.Protocol.Self == "" {
		cfg.Protocol = defaultRelaySignalConfig(cfg.Self, time.Now())
	}
	if cfg.Tick == 0 {
		cfg.Tick = 100 * time.Millisecond
	}
	cfg.Protocol.Accept = cfg.Accept
	return &relaySignaller{cfg: cfg, in: make(chan inboundRelayMsg, 256), private: cfg.Private,
		keys: map[wgtypes.Key][32]byte{}, st: newRelaySignal(cfg.Protocol), relays: map[string]string{}}
}

// setPrivate makes key sign and check this node's messages from now on,
// after a key rotation switched the node to it. The peers check with the
// public key the node announces, so a message keyed with the old one would
// be refused by all of them from the switch on.
func (r *relaySignaller) setPrivate(key wgtypes.Key) {
	r.keysMu.Lock()
	defer r.keysMu.Unlock()
	if key == r.private {
		return
	}
	r.private = key
	clear(r.keys)
}

func (r *relaySignaller) macKey(pub wgtypes.Key) ([32]byte, error) {
	r.keysMu.Lock()
	defer r.keysMu.Unlock()
	if k, ok := r.keys[pub]; ok {
		return k, nil
	}
	k, err := relayMACKey(r.private, pub)
	if err != nil {
		return k, err
	}
	if len(r.keys) > 4096 {
		clear(r.keys)
	}
	r.keys[pub] = k
	return k, nil
}

// receive takes a message gossiped by the node from; those addressed to
// other nodes are dropped, the others authenticated and handed to Run.
func (r *relaySignaller) receive(from string, b []byte) {
	to, err := relayMsgTo(b)
	if err != nil || to != r.cfg.Self {
		return
	}
	pub, ok := r.cfg.PublicKey(from)
	if !ok {
		r.cfg.Log.Debug("relay message from a node that is no live member with a vetted key; dropped", "peer", from)
		return
	}
	key, err := r.macKey(pub)
	if err != nil {
		return
	}
	m, err := decodeRelayMsg(b, from, key)
	if err != nil {
		r.cfg.Log.Warn("relay message refused", "peer", from, "err", err)
		return
	}
	select {
	case r.in <- inboundRelayMsg{from: from, m: m}:
	default: // Run is behind: the sender tries again
	}
}

// update gives the live members and the peers this node cannot reach
// directly, and returns the relay of every cut pair that has one, by the
// other end.
func (r *relaySignaller) update(members, unreachable []string, now time.Time) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.update(members, unreachable, now)
	r.st.step(now)
	r.relays = r.currentRelays()
	return maps.Clone(r.relays)
}

func (r *relaySignaller) currentRelays() map[string]string {
	out := map[string]string{}
	for p := range r.st.members {
		if via := r.st.relayOf(p); via != "" {
			out[p] = via
		}
	}
	return out
}

// Run handles arriving messages and sends and retries the protocol's until
// ctx ends.
func (r *relaySignaller) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.Tick)
	defer t.Stop()
	for {
		var msg *inboundRelayMsg
		select {
		case <-ctx.Done():
			return nil
		case in := <-r.in:
			msg = &in
		case <-t.C:
		}
		now := time.Now()
		r.mu.Lock()
		if msg != nil {
			if msg.m.Kind != kindAck {
				r.cfg.Log.Debug("relay message", "peer", msg.from, "kind", kindName(msg.m.Kind), "pair", msg.m.A+" "+msg.m.B, "epoch", msg.m.Epoch)
			}
			r.st.receive(msg.from, msg.m, now)
		}
		r.st.step(now)
		out := r.st.outgoing(now)
		relays := r.currentRelays()
		changed := !maps.Equal(relays, r.relays)
		r.relays = relays
		r.mu.Unlock()
		r.send(out)
		if changed && r.cfg.OnChange != nil {
			r.cfg.OnChange()
		}
	}
}

func (r *relaySignaller) send(msgs []relayMsg) {
	for _, m := range msgs {
		pub, ok := r.cfg.PublicKey(m.To)
		if !ok {
			continue
		}
		key, err := r.macKey(pub)
		if err != nil {
			continue
		}
		wire := encodeRelayMsg(m, r.cfg.Self, key)
		r.cfg.Broadcast(append([]byte{tagRelaySignal}, wire...))
		if r.cfg.Direct != nil {
			r.cfg.Direct(m.To, wire)
		}
	}
}
