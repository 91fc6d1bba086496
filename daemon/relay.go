package daemon

import (
	"slices"
	"time"
)

// Relaying: when two live nodes cannot reach each other directly but both
// reach a third, their traffic goes through the third. Each node judges its
// direct paths by probes (liveness.go), those to peers without a probe
// address (older daemons) by what WireGuard sees (a path that carries
// nothing, not even the keepalives every 25 s, is broken), and publishes
// the peers it cannot reach in its gossip metadata. From those lists every node computes the same
// relay for a pair, which matters: WireGuard accepts a packet only from the
// peer whose AllowedIPs hold its source, so both ends of a pair must route
// through the same relay.
//
//	direct ──(probes: down; or no rx for directStale)──▶ relayed via R
//	relayed via R ──(probes: up; or rx again)──▶ direct
//
// While a peer is relayed its direct entry stays, with only its probe
// address as AllowedIPs, so the probes keep taking the direct path, and
// the daemon re-arms its keepalive every relayProbe so WireGuard keeps
// trying a handshake there.

const (
	// keepalive is the PersistentKeepalive every peer gets: it keeps NAT
	// mappings open for peers behind NAT and gives every tunnel a fresh
	// handshake to judge the direct path by.
	keepalive = 25 * time.Second
	// directStale is how long a direct path may carry nothing before it is
	// judged broken: more than one keepalive interval plus a handshake.
	directStale = keepalive + 15*time.Second
	// relayProbe is how often a relayed peer's direct path is tried again.
	relayProbe = 10 * time.Second
)

// pathProbe is what the daemon last saw of the direct path to one peer.
type pathProbe struct {
	rx        int64     // bytes received on the direct entry
	rxChanged time.Time // when rx last grew (or the peer appeared)
	probed    time.Time // when a relayed peer's keepalive was last re-armed
}

// observe records the received bytes of the direct entry at now.
func (p *pathProbe) observe(rx int64, now time.Time) {
	if p.rxChanged.IsZero() || rx > p.rx {
		p.rxChanged = now
	}
	p.rx = rx
}

// healthy reports whether the direct path carried anything lately.
func (p pathProbe) healthy(now time.Time) bool {
	return now.Sub(p.rxChanged) < directStale
}

// chooseRelay returns the relay of the pair (a, b), or "" when they talk
// directly or no node can carry them. members are the live nodes (a and b
// among them); unreachable gives the peers each node reports it cannot reach
// directly. The answer is the same whichever node computes it from the same
// view.
func chooseRelay(a, b string, members []string, unreachable func(string) []string) string {
	cut := func(x, y string) bool {
		return slices.Contains(unreachable(x), y) || slices.Contains(unreachable(y), x)
	}
	if !cut(a, b) {
		return ""
	}
	sorted := slices.Clone(members)
	slices.Sort(sorted)
	for _, r := range sorted {
		if r == a || r == b {
			continue
		}
		if !cut(a, r) && !cut(b, r) {
			return r
		}
	}
	return ""
}
