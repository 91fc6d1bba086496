package daemon

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"time"
)

// Relaying: when two live nodes cannot reach each other directly but both
// reach a third, their traffic goes through the third. Each node judges its
// direct paths by probes (liveness.go), those to peers without a probe
// address (older daemons) by what WireGuard sees (a path that carries
// nothing, not even the keepalives every 25 s, is broken), and tells the
// peers it cannot reach in relay signalling messages over the gossip
// (relaysignal.go), which also choose the relay of each pair: ranked by
// rendezvous hash (rankRelays) and confirmed by the relay to both ends.
// Both ends must route through the same relay: WireGuard accepts a packet
// only from the peer whose AllowedIPs hold its source.
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

// unseen records that the peer has no entry in the tunnel yet (it is
// being added): its path is judged from now on. Without it a new peer
// would count as silent since ever, so every start would relay its pairs
// for a moment, and the route changes there and back lose packets.
func (p *pathProbe) unseen(now time.Time) {
	if p.rxChanged.IsZero() {
		p.rxChanged = now
	}
}

// healthy reports whether the direct path carried anything lately.
func (p pathProbe) healthy(now time.Time) bool {
	return now.Sub(p.rxChanged) < directStale
}

// relayScore is the rendezvous (highest random weight) hash of the pair
// {a, b} and the candidate relay c: the same whichever end computes it.
func relayScore(a, b, c string) uint64 {
	a, b = pairOf(a, b)
	h := sha256.New()
	for _, s := range []string{a, b, c} {
		h.Write(binary.AppendUvarint(nil, uint64(len(s))))
		h.Write([]byte(s))
	}
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// rankRelays orders the candidate relays of the pair {a, b} by their
// rendezvous score, best first (a and b themselves are left out). Each
// pair ranks the nodes in its own random order, so the pairs of a cluster
// spread over the relays, and a candidate leaving moves only the pairs it
// carried.
func rankRelays(a, b string, candidates []string) []string {
	out := make([]string, 0, len(candidates))
	scores := map[string]uint64{}
	for _, c := range candidates {
		if c == a || c == b || slices.Contains(out, c) {
			continue
		}
		out = append(out, c)
		scores[c] = relayScore(a, b, c)
	}
	slices.SortFunc(out, func(x, y string) int {
		switch sx, sy := scores[x], scores[y]; {
		case sx > sy:
			return -1
		case sx < sy:
			return 1
		case x < y:
			return -1
		case x > y:
			return 1
		}
		return 0
	})
	return out
}
