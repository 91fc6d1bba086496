package daemon

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// simPath drives a liveness over a simulated path in steps of 10 ms.
type simPath struct {
	l       *liveness
	now     time.Time
	rtt     time.Duration
	works   func(t time.Time) bool // the path carries packets at t
	lose    func() bool            // this probe or its answer is lost
	id      uint64
	pending map[uint64]time.Time // answers on their way, by when they arrive
	probes  int
	changes []pathState
}

func newSimPath(start time.Time) *simPath {
	return &simPath{
		l: newLiveness(defaultLivenessConfig(), start), now: start, rtt: 20 * time.Millisecond,
		works: func(time.Time) bool { return true }, lose: func() bool { return false },
		pending: map[uint64]time.Time{},
	}
}

// run advances the clock by d.
func (s *simPath) run(d time.Duration) {
	end := s.now.Add(d)
	for s.now.Before(end) {
		for id, at := range s.pending {
			if !s.now.Before(at) {
				delete(s.pending, id)
				s.l.answer(id, s.now)
			}
		}
		if s.l.poll(s.now) {
			s.id++
			s.probes++
			s.l.sent(s.id, s.now)
			if s.works(s.now) && !s.lose() {
				s.pending[s.id] = s.now.Add(s.rtt)
			}
		}
		if st, _ := s.l.State(); len(s.changes) == 0 || s.changes[len(s.changes)-1] != st {
			s.changes = append(s.changes, st)
		}
		s.now = s.now.Add(10 * time.Millisecond)
	}
}

// until advances the clock until the state is want and returns how long
// that took; it fails after limit.
func (s *simPath) until(t *testing.T, want pathState, limit time.Duration) time.Duration {
	t.Helper()
	start := s.now
	for s.now.Sub(start) <= limit {
		if st, _ := s.l.State(); st == want {
			return s.now.Sub(start)
		}
		s.run(10 * time.Millisecond)
	}
	t.Fatalf("not %s within %v", want, limit)
	return 0
}

var t0 = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func TestLivenessHealthyPathCostsOneProbeASecond(t *testing.T) {
	s := newSimPath(t0)
	if d := s.until(t, pathUp, 2*time.Second); d > time.Second {
		t.Errorf("a working path took %v to be up, want at most 1 s", d)
	}
	s.probes = 0
	s.run(time.Minute)
	if s.probes < 58 || s.probes > 62 {
		t.Errorf("%d probes in a minute on a healthy path, want about 60", s.probes)
	}
	if rtt := s.l.RTT(); rtt != 20*time.Millisecond {
		t.Errorf("RTT %v, want 20ms", rtt)
	}
	if loss, n := s.l.Loss(); loss != 0 || n != 60 {
		t.Errorf("loss %v over %d probes, want 0 over 60", loss, n)
	}
}

func TestLivenessCutAndHeal(t *testing.T) {
	// Wherever in the probe interval the cut falls, it is judged within
	// 3.1 s, and the heal within 1.1 s.
	for _, offset := range []time.Duration{0, 130 * time.Millisecond, 500 * time.Millisecond, 990 * time.Millisecond} {
		t.Run(offset.String(), func(t *testing.T) {
			s := newSimPath(t0)
			s.run(10*time.Second + offset)
			cut, heal := s.now, time.Time{}
			s.works = func(at time.Time) bool { return at.Before(cut) || !heal.IsZero() && !at.Before(heal) }
			down := s.until(t, pathDown, 10*time.Second)
			if down > 3100*time.Millisecond {
				t.Errorf("cut judged after %v, want at most 3.1 s", down)
			}
			if _, since := s.l.State(); s.now.Sub(since) > 10*time.Millisecond {
				t.Errorf("since %v, want the moment of the judgement %v", since, s.now)
			}
			s.run(20 * time.Second)
			heal = s.now
			if up := s.until(t, pathUp, 5*time.Second); up > 1100*time.Millisecond {
				t.Errorf("heal judged after %v, want at most 1.1 s", up)
			}
			if want := []pathState{pathUnknown, pathUp, pathDown, pathUp}; !equalStates(s.changes, want) {
				t.Errorf("states %v, want %v", s.changes, want)
			}
		})
	}
}

func TestLivenessNeverFlapsOnLoss(t *testing.T) {
	tests := []struct {
		name string
		lose func(r *rand.Rand) func() bool
	}{
		{"one lost probe", func(*rand.Rand) func() bool {
			n := 0
			return func() bool { n++; return n == 20 }
		}},
		{"four lost in a row", func(*rand.Rand) func() bool {
			n := 0
			return func() bool { n++; return n >= 20 && n < 24 }
		}},
		// 5% loss each way on a link: about 10% of the round trips.
		{"10% random loss for an hour", func(r *rand.Rand) func() bool {
			return func() bool { return r.Float64() < 0.0975 }
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSimPath(t0)
			s.until(t, pathUp, 5*time.Second)
			s.lose = tt.lose(rand.New(rand.NewPCG(1, 2)))
			s.run(time.Hour)
			if want := []pathState{pathUnknown, pathUp}; !equalStates(s.changes, want) {
				t.Errorf("states %v, want %v (no switch)", s.changes, want)
			}
		})
	}
}

func TestLivenessLossAndRTT(t *testing.T) {
	s := newSimPath(t0)
	s.until(t, pathUp, 5*time.Second)
	n := 0
	s.lose = func() bool { n++; return n%10 == 0 } // every tenth probe
	s.run(5 * time.Minute)
	loss, probes := s.l.Loss()
	if probes != 60 || loss < 0.08 || loss > 0.14 {
		t.Errorf("loss %.3f over %d probes, want about 0.1 over 60", loss, probes)
	}
	l := newLiveness(defaultLivenessConfig(), t0)
	for i, rtt := range []time.Duration{5, 1, 9, 3} {
		l.sent(uint64(i), t0)
		l.answer(uint64(i), t0.Add(rtt*time.Millisecond))
	}
	if got := l.RTT(); got != 4*time.Millisecond {
		t.Errorf("median of 5, 1, 9, 3 ms: %v, want 4ms", got)
	}
	if l.answer(99, t0) {
		t.Error("an answer to a probe never sent counted")
	}
}

func equalStates(a, b []pathState) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNATKind(t *testing.T) {
	ap := netip.MustParseAddrPort
	own := []netip.AddrPort{ap("172.30.1.1:6784")}
	tests := []struct {
		name     string
		observed map[string]netip.AddrPort
		prev     string
		kind     string
		refl     string
	}{
		{"nobody saw it yet", nil, "", natUnknown, ""},
		{"seen at its own address", map[string]netip.AddrPort{"a": ap("172.30.1.1:6784")}, "", natNone, ""},
		{"one public endpoint", map[string]netip.AddrPort{"a": ap("172.30.0.201:10001"), "b": ap("172.30.0.201:10001")}, "", natCone, "172.30.0.201:10001"},
		{"one observer", map[string]netip.AddrPort{"a": ap("172.30.0.201:10001")}, "", natCone, "172.30.0.201:10001"},
		{"siblings see the private one, the others one public", map[string]netip.AddrPort{
			"sib": ap("172.30.1.1:6784"), "a": ap("172.30.0.201:10001"), "b": ap("172.30.0.201:10001")}, "", natCone, "172.30.0.201:10001"},
		{"a port per peer", map[string]netip.AddrPort{"a": ap("172.30.0.201:41234"), "b": ap("172.30.0.201:52011")}, "", natSymmetric, ""},
		// A peer's WireGuard lost its endpoint for the node for a while: its
		// answer says nothing, and the sibling sees the private one.
		{"symmetric, one observer left", map[string]netip.AddrPort{
			"sib": ap("172.30.1.1:6784"), "a": ap("172.30.0.201:41234"), "b": {}}, natSymmetric, natSymmetric, ""},
		{"symmetric, then two observers agree", map[string]netip.AddrPort{
			"a": ap("172.30.0.201:10001"), "b": ap("172.30.0.201:10001")}, natSymmetric, natCone, "172.30.0.201:10001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, refl := natKind(own, tt.observed, tt.prev)
			got := ""
			if refl.IsValid() {
				got = refl.String()
			}
			if kind != tt.kind || got != tt.refl {
				t.Errorf("natKind = %q %q, want %q %q", kind, got, tt.kind, tt.refl)
			}
		})
	}
}

func TestPeerEndpoint(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name               string
		reflexive, ownRefl netip.AddrPort
		want               string
	}{
		{"peer not behind NAT", netip.AddrPort{}, ap("172.30.0.202:10001"), "172.30.2.1:6784"},
		{"peer behind a cone NAT", ap("172.30.0.201:10001"), netip.AddrPort{}, "172.30.0.201:10001"},
		{"both behind cone NATs: punch", ap("172.30.0.201:10001"), ap("172.30.0.202:10001"), "172.30.0.201:10001"},
		{"behind the same NAT: the private endpoint", ap("172.30.0.201:10001"), ap("172.30.0.201:10002"), "172.30.2.1:6784"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := peerEndpoint("172.30.2.1:6784", tt.reflexive, tt.ownRefl); got != tt.want {
				t.Errorf("peerEndpoint = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestProbeMessages(t *testing.T) {
	for _, m := range []probeMsg{
		{typ: probeRequest, nonce: 0x0102030405060708},
		{typ: probeAnswer, nonce: 7, endpoint: "172.30.0.201:10001"},
		{typ: probeAnswer, nonce: 8},
	} {
		got, ok := parseProbe(encodeProbe(m.typ, m.nonce, m.endpoint))
		if !ok || got != m {
			t.Errorf("round trip of %+v: %+v, %v", m, got, ok)
		}
	}
	for _, b := range [][]byte{nil, []byte("WP"), []byte("XP\x01aaaaaaaa"), []byte("WP\x09aaaaaaaa"), []byte("WP\x01aaaaaaaaextra")} {
		if m, ok := parseProbe(b); ok {
			t.Errorf("parseProbe(%q) = %+v, want refused", b, m)
		}
	}
}

func FuzzParseProbe(f *testing.F) {
	f.Add(encodeProbe(probeAnswer, 1, "1.2.3.4:5"))
	f.Add(encodeProbe(probeRequest, 2, ""))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := parseProbe(b)
		if !ok {
			return
		}
		back, ok := parseProbe(encodeProbe(m.typ, m.nonce, m.endpoint))
		if !ok || back != m {
			t.Errorf("%q parsed to %+v, which does not round-trip", b, m)
		}
	})
}

func TestLivenessScaled(t *testing.T) {
	def := defaultLivenessConfig()
	for _, tc := range []struct {
		interval             time.Duration
		wantFast, wantTimout time.Duration
	}{
		{0, def.FastInterval, def.Timeout},
		{time.Second, def.FastInterval, def.Timeout},
		{3 * time.Second, 750 * time.Millisecond, 3 * time.Second},
		{500 * time.Millisecond, 125 * time.Millisecond, 500 * time.Millisecond},
	} {
		got := def.scaled(tc.interval)
		wantInterval := tc.interval
		if wantInterval == 0 {
			wantInterval = def.Interval
		}
		if got.Interval != wantInterval || got.FastInterval != tc.wantFast || got.Timeout != tc.wantTimout || got.DownAfter != def.DownAfter {
			t.Errorf("scaled(%v) = %+v; want interval %v, fast %v, timeout %v, down after %d", tc.interval, got, wantInterval, tc.wantFast, tc.wantTimout, def.DownAfter)
		}
	}
}

// TestLivenessFirstJudgementWaitsForAHandshakeRetry: a new path whose
// first WireGuard handshake was lost (both ends started one at once)
// carries nothing for about 5 s; it is not judged down meanwhile, and goes
// straight to up. A path that never works is judged down after FirstDown.
func TestLivenessFirstJudgementWaitsForAHandshakeRetry(t *testing.T) {
	s := newSimPath(t0)
	s.works = func(at time.Time) bool { return at.Sub(t0) >= 5333*time.Millisecond }
	s.until(t, pathUp, 8*time.Second)
	if want := []pathState{pathUnknown, pathUp}; !equalStates(s.changes, want) {
		t.Errorf("states %v, want %v (never down)", s.changes, want)
	}

	s = newSimPath(t0)
	s.works = func(time.Time) bool { return false }
	down := s.until(t, pathDown, 10*time.Second)
	if down < 6*time.Second || down > 6500*time.Millisecond {
		t.Errorf("a path that never works judged down after %v, want 6 s to 6.5 s", down)
	}
}
