package mesh

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is the gossip port, TCP and UDP.
const DefaultPort = 6783

// KeySize is the size of the gossip key (AES-256).
const KeySize = 32

// Config configures a Mesh. Start from DefaultConfig and set at least
// NodeName and BindAddr.
//
// # Failure detection
//
// Every ProbeInterval each node probes one other node (round robin over a
// shuffled list), so some node probes a dead peer within about one or two
// intervals. The probe waits ProbeTimeout for a direct ack, then asks other
// nodes to probe indirectly and tries TCP until the interval ends. After a
// failed probe the peer is suspect for
//
//	SuspicionMult × max(1, log10(N)) × ProbeInterval
//
// (N = cluster size) before it is declared dead and a Leave event is
// delivered. In clusters of at least SuspicionMult nodes memberlist
// starts the suspicion timer at SuspicionMaxTimeoutMult times that and
// shortens it to that value as SuspicionMult−2 other nodes confirm the
// suspicion, which they normally do within a few probe intervals. So a
// killed node is declared dead after roughly
//
//	(SuspicionMult × max(1, log10(N)) + 1 … 3) × ProbeInterval
//
// which with the defaults (1 s, ×4) is 5–7 s up to 10 nodes, 9–11 s at
// 100 nodes and 11–13 s at 250 (BenchmarkFailureDetection measures 5.9 s
// for 5 nodes). FailureDetectionTime computes the upper end.
type Config struct {
	// NodeName is the unique name of this node in the cluster. Required.
	NodeName string
	// BindAddr is the underlay IP to listen on for gossip. Default
	// "0.0.0.0" (all addresses; then set AdvertiseAddr or rely on
	// memberlist picking a private address).
	BindAddr string
	// BindPort is the TCP and UDP port to listen on. Default DefaultPort.
	// 0 picks a free port (tests).
	BindPort int
	// AdvertiseAddr and AdvertisePort are what other nodes use to reach
	// this node, for NAT. Default: BindAddr and the bound port.
	AdvertiseAddr string
	AdvertisePort int
	// Key is the KeySize-byte gossip key derived from the cluster secret.
	// Every packet and stream is encrypted and authenticated with it, and
	// nodes with another key are never admitted. Nil means insecure:
	// gossip in clear text, accepted from anyone who can reach the port.
	Key []byte
	// Seeds are the nodes to join: "host" or "host:port" (the port
	// defaults to DefaultPort). Empty: wait for others to join this node.
	// At start the node joins up to 3 of them, tried in random order;
	// the others are joined later (RejoinInterval) if they are not
	// members by then.
	Seeds []string
	// Meta is this node's initial metadata; Name is set to NodeName when
	// empty.
	Meta Meta
	// Logger receives the mesh's logs and memberlist's, the latter
	// rate-limited and tagged lib=memberlist (so the caller may tag
	// with "component" itself). Default: discard.
	Logger *slog.Logger
	// Delegate receives the application's state and messages. Optional.
	Delegate AppDelegate

	// ProbeInterval is how often each node probes a random other node.
	// Default 1 s: a dead node is noticed within a second or two.
	ProbeInterval time.Duration
	// ProbeTimeout is how long to wait for a direct ack before asking
	// other nodes to probe indirectly; it should exceed the 99th
	// percentile RTT. Default 500 ms (LAN).
	ProbeTimeout time.Duration
	// SuspicionMult scales how long a node stays suspect (see Failure
	// detection above) so it can refute a false accusation. Default 4:
	// short enough for ~5–10 s detection, long enough that a node paused
	// for a couple of seconds is not thrown out.
	SuspicionMult int
	// SuspicionMaxTimeoutMult bounds the suspicion time when no other node
	// confirms the suspicion. Default 6 (memberlist's).
	SuspicionMaxTimeoutMult int
	// GossipInterval is how often membership changes and small broadcasts
	// are gossiped to 3 random nodes. Default 200 ms: changes spread in
	// about a second in clusters of hundreds, at a few packets per second.
	GossipInterval time.Duration
	// PushPullInterval is how often a node exchanges its full state
	// (members and application state) with a random node over TCP. This
	// is the anti-entropy that repairs lost gossip. Default 15 s;
	// memberlist stretches it for clusters above 32 nodes.
	PushPullInterval time.Duration
	// DeadNodeReclaimTime is how long after a node is declared dead its
	// name may come back with another address (a rescheduled node with a
	// new IP). Default 10 s.
	DeadNodeReclaimTime time.Duration
	// TCPTimeout bounds each TCP dial, push/pull and reliable send, so it
	// also bounds how long a join attempt on an unreachable seed takes.
	// Default 5 s.
	TCPTimeout time.Duration
	// JoinBackoffMin and JoinBackoffMax bound the exponential backoff
	// between attempts to join the seeds at start (each wait is drawn
	// between a tenth of the backoff and the backoff). A node that starts
	// before its seeds keeps trying forever. Defaults 500 ms and 10 s: a
	// seed busy with a whole cluster starting at once (memberlist refuses
	// more than 128 concurrent joins) is retried soon, at a cost of one
	// TCP dial per node every 10 s while the seeds are down.
	JoinBackoffMin time.Duration
	JoinBackoffMax time.Duration
	// RejoinInterval is how often the node tries to join the seeds that
	// are not members and up to 3 members that were declared dead or left
	// (at their last address). memberlist alone never reconnects two
	// halves of a healed partition; this does. Default 15 s.
	RejoinInterval time.Duration
	// ForgetDepartedAfter is how long the address of a dead or departed
	// node is kept for rejoin attempts. Default 1 h.
	ForgetDepartedAfter time.Duration

	// Transport, when set, carries gossip instead of UDP and TCP on
	// BindAddr and BindPort, which are then ignored: simulations of large
	// clusters in one process (meshtest.SimNetwork). The Mesh shuts it
	// down with itself.
	Transport memberlist.NodeAwareTransport

	// Detour, when set, names the members whose gossip goes to another
	// address of theirs (the one it returns, at the same port) from this
	// node's detour address (ListenDetour) instead of to their gossip
	// address: weft sends gossip to members behind NAT through the tunnel
	// (see detourTransport). It is called for every message memberlist
	// sends, from memberlist's goroutines, and must not block or call
	// into the Mesh. Ignored with Transport.
	Detour func(name string) (netip.Addr, bool)

	// wrapTransport lets tests interpose on the network (partitions).
	wrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
}

// DefaultConfig returns a Config with the documented defaults for a LAN;
// NodeName, BindAddr, Key, Seeds and Meta are left for the caller.
func DefaultConfig() Config {
	return Config{
		BindAddr:                "0.0.0.0",
		BindPort:                DefaultPort,
		ProbeInterval:           time.Second,
		ProbeTimeout:            500 * time.Millisecond,
		SuspicionMult:           4,
		SuspicionMaxTimeoutMult: 6,
		GossipInterval:          200 * time.Millisecond,
		PushPullInterval:        15 * time.Second,
		DeadNodeReclaimTime:     10 * time.Second,
		TCPTimeout:              5 * time.Second,
		JoinBackoffMin:          500 * time.Millisecond,
		JoinBackoffMax:          10 * time.Second,
		RejoinInterval:          15 * time.Second,
		ForgetDepartedAfter:     time.Hour,
	}
}

// FailureDetectionTime is the time within which a node that stops
// answering is normally declared dead in a cluster of n nodes (see the
// Config documentation).
func (c Config) FailureDetectionTime(n int) time.Duration {
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	return time.Duration((float64(c.SuspicionMult)*scale + 3) * float64(c.ProbeInterval))
}

// validate checks c and fills zero values from DefaultConfig.
func (c *Config) validate() error {
	if c.NodeName == "" {
		return errors.New("mesh config: node name is empty; set --node-name")
	}
	if len(c.Key) != 0 && len(c.Key) != KeySize {
		return fmt.Errorf("mesh config: gossip key has %d bytes, want %d", len(c.Key), KeySize)
	}
	if c.Meta.Name == "" {
		c.Meta.Name = c.NodeName
	}
	if c.Meta.Name != c.NodeName {
		return fmt.Errorf("mesh config: meta name %q differs from node name %q", c.Meta.Name, c.NodeName)
	}
	if _, err := c.Meta.Encode(); err != nil {
		return fmt.Errorf("mesh config: %w", err)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	d := DefaultConfig()
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	setDefault(&c.ProbeInterval, d.ProbeInterval)
	setDefault(&c.ProbeTimeout, d.ProbeTimeout)
	setDefault(&c.SuspicionMult, d.SuspicionMult)
	setDefault(&c.SuspicionMaxTimeoutMult, d.SuspicionMaxTimeoutMult)
	setDefault(&c.GossipInterval, d.GossipInterval)
	setDefault(&c.PushPullInterval, d.PushPullInterval)
	setDefault(&c.DeadNodeReclaimTime, d.DeadNodeReclaimTime)
	setDefault(&c.TCPTimeout, d.TCPTimeout)
	setDefault(&c.JoinBackoffMin, d.JoinBackoffMin)
	setDefault(&c.JoinBackoffMax, d.JoinBackoffMax)
	setDefault(&c.RejoinInterval, d.RejoinInterval)
	setDefault(&c.ForgetDepartedAfter, d.ForgetDepartedAfter)
	if c.JoinBackoffMax < c.JoinBackoffMin {
		c.JoinBackoffMax = c.JoinBackoffMin
	}
	if c.ProbeTimeout > c.ProbeInterval {
		return fmt.Errorf("mesh config: probe timeout %v exceeds probe interval %v", c.ProbeTimeout, c.ProbeInterval)
	}
	seeds, err := normalizeSeeds(c.Seeds)
	if err != nil {
		return fmt.Errorf("mesh config: %w", err)
	}
	c.Seeds = seeds
	return nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// normalizeSeeds gives every seed an explicit port.
func normalizeSeeds(seeds []string) ([]string, error) {
	out := make([]string, 0, len(seeds))
	for _, s := range seeds {
		if s == "" {
			continue
		}
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			// No port: a host name, an IPv4 address, or an IPv6 address
			// with or without brackets.
			host, port = s, strconv.Itoa(DefaultPort)
			if len(host) > 2 && host[0] == '[' && host[len(host)-1] == ']' {
				host = host[1 : len(host)-1]
			}
		}
		if host == "" {
			return nil, fmt.Errorf("seed %q has no host", s)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return nil, fmt.Errorf("seed %q: bad port %q", s, port)
		}
		out = append(out, net.JoinHostPort(host, port))
	}
	return out, nil
}

// seedAddrPort returns the seed's address when it is a literal IP.
func seedAddrPort(seed string) (netip.AddrPort, bool) {
	ap, err := netip.ParseAddrPort(seed)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}
