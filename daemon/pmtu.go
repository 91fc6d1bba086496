package daemon

import "time"

// Path MTU discovery: how large a packet gets through the tunnel to each
// peer. Underlays differ per path (one peer sits behind a VPN whose MTU is
// 1280, the others on plain Ethernet) and a path that drops packets over
// its limit without an ICMP answer black-holes every TCP connection whose
// segments are larger. So the daemon measures each path with ICMP echoes
// of chosen sizes, Don't Fragment set, from its tunnel address to the
// peer's (the peer's kernel answers; no daemon code on the other side, so
// mixed versions work), keeps the largest size that came back, and clamps
// the TCP MSS of traffic to and from the peer's ranges to it.
//
// One search per peer, a round at a time. A round sends a probe of the
// size under test and, alongside, a control probe of the largest size known
// to pass (at first the floor). Then:
//
//	probe echoed                      → the size passes: lo = size
//	probe lost, control echoed        → one loss of the size; after
//	                                    Losses of them: hi = size
//	both lost                         → the path is down or lossy; nothing
//	                                    learnt, back off and try again
//
//	 idle ──(Reprobe passed, or restart: new endpoint or relay)──▶ searching
//	   ▲                                                              │
//	   └───────────────(hi - lo ≤ Precision: mtu = lo)────────────────┘
//
// Sizes under test: first the guesses (a fresh search: Max; a re-probe: the
// last result and the size that failed last time, so an unchanged path
// costs two sizes), then the middle of [lo, hi). One lost probe never
// shrinks the result: a size fails only after Losses losses while the
// control passes. The result changes at the end of a search, or earlier
// when the search proves the current result too large: then it drops at
// once to the largest size known to pass, and follows lo up.

// pmtuConfig tunes a pmtuSearch. The zero value is not useful; see
// defaultPMTUConfig.
type pmtuConfig struct {
	Max        int           // largest size probed: the tunnel's MTU
	Min        int           // the floor: the control size before anything passed
	Precision  int           // the search ends when hi - lo is at most this
	Losses     int           // losses of a size (control passing) before it is too large
	Timeout    time.Duration // a probe without an echo by then is lost
	Reprobe    time.Duration // time between searches
	MaxBackoff time.Duration // longest wait between rounds while the path is down
}

func defaultPMTUConfig(max int) pmtuConfig {
	return pmtuConfig{
		Max:        max,
		Min:        min(576, max),
		Precision:  8,
		Losses:     3,
		Timeout:    time.Second,
		Reprobe:    time.Minute,
		MaxBackoff: 30 * time.Second,
	}
}

// pmtuSearch is the path MTU state of one peer. It does no I/O and reads
// no clock: its owner calls poll and echoed and sends the probes poll asks
// for. Not safe for concurrent use.
type pmtuSearch struct {
	cfg pmtuConfig

	mtu    int // the result: the largest size known to pass; 0 until known
	lastHi int // the smallest size that failed in the last search; 0: none

	searching bool
	shrunk    bool  // this search proved mtu too large: mtu follows lo
	lo, hi    int   // lo passed (or is the floor), hi failed (or is Max+1)
	guesses   []int // sizes to try before bisecting
	losses    int   // losses of the size under test
	backoff   time.Duration
	next      time.Time // no round before this

	round   pmtuRound
	inRound bool
	id      uint32 // of the current round; echoes of older rounds are ignored
}

// pmtuRound is one round in flight.
type pmtuRound struct {
	size, control int
	sent          time.Time
	gotSize       bool
	gotControl    bool
}

// pmtuProbe is one probe poll asks for: an echo of Size bytes (the whole IP
// packet), tagged with the round it belongs to.
type pmtuProbe struct {
	Round uint32
	Size  int
}

func newPMTUSearch(cfg pmtuConfig, now time.Time) *pmtuSearch {
	s := &pmtuSearch{cfg: cfg}
	s.restart(now)
	return s
}

// MTU is the result: the largest packet known to get through, 0 while
// unknown.
func (s *pmtuSearch) MTU() int { return s.mtu }

// Searching reports whether a search is going on.
func (s *pmtuSearch) Searching() bool { return s.searching }

// restart begins a search at now (a new peer, endpoint or relay), dropping
// the round in flight.
func (s *pmtuSearch) restart(now time.Time) {
	s.searching, s.shrunk = true, false
	s.lo, s.hi = s.cfg.Min, s.cfg.Max+1
	s.guesses = s.guesses[:0]
	if s.mtu > 0 {
		s.guesses = append(s.guesses, s.mtu)
		if s.lastHi > 0 {
			s.guesses = append(s.guesses, s.lastHi)
		}
	}
	s.guesses = append(s.guesses, s.cfg.Max)
	s.losses = 0
	s.backoff = 0
	s.inRound = false
	s.id++
	s.next = now
}

// poll concludes a round that timed out and returns the probes to send
// now, if any.
func (s *pmtuSearch) poll(now time.Time) []pmtuProbe {
	if s.inRound {
		if now.Sub(s.round.sent) < s.cfg.Timeout {
			return nil
		}
		s.conclude(now)
	}
	if !s.searching {
		if now.Before(s.next) {
			return nil
		}
		s.restart(now)
	}
	if now.Before(s.next) {
		return nil
	}
	size := s.candidate()
	if size == 0 {
		s.finish(now)
		return nil
	}
	s.id++
	s.round = pmtuRound{size: size, control: s.lo, sent: now}
	s.inRound = true
	return []pmtuProbe{{Round: s.id, Size: size}, {Round: s.id, Size: s.lo}}
}

// candidate is the size to test next, 0 when the search is over.
func (s *pmtuSearch) candidate() int {
	if s.lo >= s.cfg.Max || s.hi-s.lo <= s.cfg.Precision {
		return 0
	}
	for len(s.guesses) > 0 {
		g := s.guesses[0]
		if g > s.lo && g < s.hi {
			return g
		}
		s.guesses = s.guesses[1:]
	}
	return (s.lo + s.hi) / 2
}

// echoed records the echo of a probe of size from round. It returns true
// when that ended the round (the probe under test came back).
func (s *pmtuSearch) echoed(round uint32, size int, now time.Time) bool {
	if !s.inRound || round != s.id {
		return false
	}
	if size == s.round.size {
		s.round.gotSize = true
	}
	if size == s.round.control {
		s.round.gotControl = true
	}
	if s.round.gotSize {
		s.conclude(now)
		return true
	}
	return false
}

// conclude judges the round in flight.
func (s *pmtuSearch) conclude(now time.Time) {
	r := s.round
	s.inRound = false
	switch {
	case r.gotSize:
		s.lo = max(s.lo, r.size)
		s.losses, s.backoff = 0, 0
		s.dropGuess(r.size)
	case r.gotControl:
		s.losses++
		s.backoff = 0
		if s.losses >= s.cfg.Losses {
			s.hi = min(s.hi, r.size)
			s.losses = 0
			s.dropGuess(r.size)
		}
	default:
		// Nothing came back: the path is down or dropping everything.
		// Judge no size by it; wait longer each time.
		s.backoff = min(max(2*s.backoff, s.cfg.Timeout), s.cfg.MaxBackoff)
		s.next = now.Add(s.backoff)
	}
	if s.mtu > 0 && s.hi <= s.mtu || s.mtu == 0 && s.hi <= s.cfg.Max {
		// The result in use (or the tunnel's MTU, assumed until a
		// result is known) is proven too large: from now on use the
		// largest size known to pass.
		s.shrunk = true
	}
	if s.shrunk {
		s.mtu = s.lo
	}
	if s.candidate() == 0 {
		s.finish(now)
	}
}

func (s *pmtuSearch) dropGuess(size int) {
	if len(s.guesses) > 0 && s.guesses[0] == size {
		s.guesses = s.guesses[1:]
	}
}

// finish ends the search with its result.
func (s *pmtuSearch) finish(now time.Time) {
	s.searching = false
	s.mtu = s.lo
	s.lastHi = 0
	if s.hi <= s.cfg.Max {
		s.lastHi = s.hi
	}
	s.next = now.Add(s.cfg.Reprobe)
}
