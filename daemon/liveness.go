package daemon

import (
	"net/netip"
	"slices"
	"time"
)

// Liveness of a direct path: every node probes the direct path to every
// peer that announces a probe address, and judges it from the answers, not
// from the WireGuard keepalives (every 25 s) alone, so a cut is seen within
// seconds and one lost probe changes nothing.
//
// A probe is a small UDP packet from this node's probe address to the
// peer's, through the tunnel. Each node's WireGuard entry for a peer carries
// the peer's probe address even while the peer's ranges are relayed, so the
// probes always take the direct path, and tell when it works again. The peer's
// daemon answers, and says at which underlay endpoint its WireGuard sees
// this node (what STUN would say), which is how a node behind NAT learns its
// public endpoint.
//
// The state machine of one path (pure: its owner sends the probes and
// passes the clock in):
//
//	            DownAfter losses in a row
//	unknown ──────────────────────────────▶ down
//	   │                                   ▲  │
//	   │ UpAfter answers in a row           │  │ UpAfter answers in a row
//	   ▼        DownAfter losses in a row   │  ▼
//	   up ──────────────────────────────────┘ up
//
// Probes go every Interval while the path is up and answers come back, and
// every FastInterval as soon as a probe is overdue (unanswered after
// FastInterval), after a loss, and while the path is not up: a cut is judged
// within about Timeout + DownAfter × FastInterval, while a healthy path
// costs one probe a second. A probe unanswered after Timeout is lost. A
// path never up is judged down no sooner than FirstDown after its first
// probe, the time a WireGuard handshake takes to be tried again.

// livenessConfig tunes the judgement of direct paths; see
// defaultLivenessConfig.
type livenessConfig struct {
	Interval     time.Duration // between probes on a healthy path
	FastInterval time.Duration // between probes when in doubt
	Timeout      time.Duration // a probe not answered by then is lost
	DownAfter    int           // losses in a row that make a path down
	UpAfter      int           // answers in a row that make a path up
	RTTSamples   int           // answers the RTT is the median of
	LossWindow   int           // probes the loss ratio is computed over
	// FirstDown is how long after its first probe a path never up yet may
	// be judged down. Two nodes that add each other at the same moment
	// both start a WireGuard handshake; each one's answer to the other's
	// voids its own, and WireGuard tries again only after 5 s (its
	// REKEY_TIMEOUT, plus up to 1/3 s of jitter). Judged down before that,
	// every pair of nodes started together would be relayed for a few
	// seconds for nothing.
	FirstDown time.Duration
}

// scaled paces the probes by interval (--probe-interval) instead of 1 s.
func (c livenessConfig) scaled(interval time.Duration) livenessConfig {
	if interval <= 0 || interval == c.Interval {
		return c
	}
	k := float64(interval) / float64(c.Interval)
	c.Interval = interval
	c.FastInterval = time.Duration(float64(c.FastInterval) * k)
	c.Timeout = time.Duration(float64(c.Timeout) * k)
	return c
}

func defaultLivenessConfig() livenessConfig {
	return livenessConfig{
		Interval:     time.Second,
		FastInterval: 250 * time.Millisecond,
		Timeout:      time.Second,
		DownAfter:    5,
		FirstDown:    6 * time.Second,
		UpAfter:      3,
		RTTSamples:   16,
		LossWindow:   60,
	}
}

// pathState is a direct path's judgement.
type pathState int

const (
	pathUnknown pathState = iota // not judged yet: counts as working
	pathUp
	pathDown
)

func (s pathState) String() string {
	switch s {
	case pathUp:
		return "up"
	case pathDown:
		return "down"
	}
	return "unknown"
}

// liveness is the judgement of one direct path. Not safe for concurrent
// use.
type liveness struct {
	cfg      livenessConfig
	state    pathState
	since    time.Time // when state last changed
	lost     int       // losses in a row
	answered int       // answers in a row
	lastSent time.Time // zero before the first probe
	first    time.Time // the first probe, zero before it
	inflight map[uint64]time.Time
	rtts     []time.Duration // the latest answers, oldest first
	outcomes []bool          // the latest probes' fates (true: answered), oldest first
}

func newLiveness(cfg livenessConfig, now time.Time) *liveness {
	return &liveness{cfg: cfg, since: now, inflight: map[uint64]time.Time{}}
}

// State is the judgement and since when it holds.
func (l *liveness) State() (pathState, time.Time) { return l.state, l.since }

// poll judges the probes that timed out and reports whether a probe is due
// now; if so, the caller sends one and calls sent.
func (l *liveness) poll(now time.Time) bool {
	for id, at := range l.inflight {
		if now.Sub(at) >= l.cfg.Timeout {
			delete(l.inflight, id)
			l.outcome(false, 0, now)
		}
	}
	interval := l.cfg.Interval
	if l.doubt(now) {
		interval = l.cfg.FastInterval
	}
	return l.lastSent.IsZero() || now.Sub(l.lastSent) >= interval
}

// sent records a probe with id sent at now.
func (l *liveness) sent(id uint64, now time.Time) {
	l.inflight[id] = now
	l.lastSent = now
	if l.first.IsZero() {
		l.first = now
	}
}

// answer records the answer to the probe id; answers to unknown or
// timed-out probes are ignored. It reports whether the answer counted.
func (l *liveness) answer(id uint64, now time.Time) bool {
	at, ok := l.inflight[id]
	if !ok {
		return false
	}
	delete(l.inflight, id)
	// Probes sent before this one and still unanswered are lost: judged
	// now, they do not break the run of answers that follows.
	for other, sent := range l.inflight {
		if sent.Before(at) {
			delete(l.inflight, other)
			l.outcome(false, 0, now)
		}
	}
	l.outcome(true, now.Sub(at), now)
	return true
}

// doubt reports whether probes should go fast: the path is not up, a
// probe was lost lately, or one is overdue.
func (l *liveness) doubt(now time.Time) bool {
	if l.state != pathUp || l.lost > 0 {
		return true
	}
	for _, at := range l.inflight {
		if now.Sub(at) >= l.cfg.FastInterval {
			return true
		}
	}
	return false
}

func (l *liveness) outcome(ok bool, rtt time.Duration, now time.Time) {
	l.outcomes = appendBounded(l.outcomes, ok, l.cfg.LossWindow)
	if ok {
		l.lost = 0
		l.answered++
		l.rtts = appendBounded(l.rtts, rtt, l.cfg.RTTSamples)
		if l.state != pathUp && l.answered >= l.cfg.UpAfter {
			l.state, l.since = pathUp, now
		}
		return
	}
	l.answered = 0
	l.lost++
	if l.state != pathDown && l.lost >= l.cfg.DownAfter && (l.state != pathUnknown || now.Sub(l.first) >= l.cfg.FirstDown) {
		l.state, l.since = pathDown, now
	}
}

// RTT is the median round trip of the latest answers, 0 before any.
func (l *liveness) RTT() time.Duration {
	if len(l.rtts) == 0 {
		return 0
	}
	s := slices.Clone(l.rtts)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Loss is the share of the latest probes that were lost (0 to 1), and how
// many probes that share is over.
func (l *liveness) Loss() (float64, int) {
	if len(l.outcomes) == 0 {
		return 0, 0
	}
	lost := 0
	for _, ok := range l.outcomes {
		if !ok {
			lost++
		}
	}
	return float64(lost) / float64(len(l.outcomes)), len(l.outcomes)
}

func appendBounded[T any](s []T, v T, n int) []T {
	s = append(s, v)
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

// NAT kinds a node tells about itself.
const (
	natUnknown   = ""          // no peer has seen this node directly yet
	natNone      = "none"      // peers see the endpoint the node has
	natCone      = "cone"      // peers see one public endpoint: punching works
	natSymmetric = "symmetric" // each peer sees another port: stays relayed to NAT'ed peers
)

// natKind judges this node's NAT from where its peers see its WireGuard
// endpoint (observed, by peer) and the endpoints it has itself (its
// underlay address and advertised endpoint with the WireGuard port). Peers
// that see an own endpoint (the same site, or no NAT) say nothing about the
// NAT; the others either all see one endpoint (cone: that is the reflexive
// endpoint, which peers behind another NAT can punch to) or not
// (symmetric). One translated observer is enough for cone; it takes two to
// tell symmetric. And once two told symmetric (prev), one observer alone
// cannot make it cone again: while a peer's WireGuard has no endpoint for
// this node yet (a relay or a handshake in between), its answers say
// nothing, and the one left would flip a symmetric NAT to cone for a while.
func natKind(own []netip.AddrPort, observed map[string]netip.AddrPort, prev string) (string, netip.AddrPort) {
	if len(observed) == 0 {
		return natUnknown, netip.AddrPort{}
	}
	var seen []netip.AddrPort
	for _, name := range sortedKeys(observed) {
		ap := observed[name]
		if !ap.IsValid() || slices.Contains(own, ap) {
			continue
		}
		seen = append(seen, ap)
	}
	if len(seen) == 0 {
		return natNone, netip.AddrPort{}
	}
	for _, ap := range seen[1:] {
		if ap != seen[0] {
			return natSymmetric, netip.AddrPort{}
		}
	}
	if prev == natSymmetric && len(seen) < 2 {
		return natSymmetric, netip.AddrPort{}
	}
	return natCone, seen[0]
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// peerEndpoint is the endpoint to configure for a peer: its reflexive
// endpoint when it announces one (it sits behind a cone NAT) and this node
// is not behind the same NAT (same public address: the private endpoint is
// the way), else what it advertises. Both ends of a pair of NAT'ed nodes
// thus send to each other's public endpoint, which is a simultaneous punch.
func peerEndpoint(advertised string, reflexive, ownReflexive netip.AddrPort) string {
	if !reflexive.IsValid() || ownReflexive.IsValid() && ownReflexive.Addr() == reflexive.Addr() {
		return advertised
	}
	return reflexive.String()
}
