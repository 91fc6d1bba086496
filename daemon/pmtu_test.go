package daemon

import (
	"testing"
	"time"
)

// pathSim plays a path for a pmtuSearch on a fake clock: a probe passes
// when its size is at most limit and drop does not take it; the echo comes
// back after rtt.
type pathSim struct {
	t     *testing.T
	s     *pmtuSearch
	now   time.Time
	limit int
	rtt   time.Duration
	// drop, when set, decides whether the n-th probe (from 0) is lost
	// whatever its size.
	drop   func(n int, p pmtuProbe) bool
	sent   []pmtuProbe
	rounds []time.Time // when each round was sent
	// seen is every result the search had, in order of change.
	seen []int
}

func newPathSim(t *testing.T, limit int) *pathSim {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	return &pathSim{t: t, s: newPMTUSearch(defaultPMTUConfig(1420), start), now: start, limit: limit, rtt: 5 * time.Millisecond}
}

// run drives the search for d of fake time, stepping 10 ms.
func (p *pathSim) run(d time.Duration) {
	end := p.now.Add(d)
	type echo struct {
		at time.Time
		pr pmtuProbe
	}
	var pending []echo
	for p.now.Before(end) {
		probes := p.s.poll(p.now)
		if len(probes) > 0 {
			p.rounds = append(p.rounds, p.now)
		}
		for _, pr := range probes {
			n := len(p.sent)
			p.sent = append(p.sent, pr)
			if pr.Size <= p.limit && (p.drop == nil || !p.drop(n, pr)) {
				pending = append(pending, echo{p.now.Add(p.rtt), pr})
			}
		}
		p.now = p.now.Add(10 * time.Millisecond)
		var keep []echo
		for _, e := range pending {
			if e.at.After(p.now) {
				keep = append(keep, e)
				continue
			}
			p.s.echoed(e.pr.Round, e.pr.Size, p.now)
		}
		pending = keep
		if m := p.s.MTU(); len(p.seen) == 0 || p.seen[len(p.seen)-1] != m {
			p.seen = append(p.seen, m)
		}
	}
}

func TestPMTUSearchConverges(t *testing.T) {
	for _, c := range []struct {
		name     string
		limit    int
		min, max int           // the result must land here
		within   time.Duration // and be final by then
	}{
		{"clean path", 1420, 1420, 1420, 100 * time.Millisecond},
		{"1280 underlay behind WireGuard", 1216, 1216 - 8, 1216, 30 * time.Second},
		{"just below the tunnel MTU", 1400, 1392, 1400, 30 * time.Second},
		{"small path", 700, 692, 700, 30 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPathSim(t, c.limit)
			p.run(c.within)
			if p.s.Searching() {
				t.Fatalf("still searching after %v (result %d, lo %d, hi %d)", c.within, p.s.MTU(), p.s.lo, p.s.hi)
			}
			if m := p.s.MTU(); m < c.min || m > c.max {
				t.Errorf("result %d, want %d..%d", m, c.min, c.max)
			}
			for _, m := range p.seen {
				if m > c.limit {
					t.Errorf("the result was %d at some point, over the path's limit %d (results: %v)", m, c.limit, p.seen)
				}
			}
		})
	}
}

func TestPMTUSearchOneLossDoesNotShrink(t *testing.T) {
	p := newPathSim(t, 1420)
	p.run(time.Second)
	if p.s.MTU() != 1420 {
		t.Fatalf("result %d on a clean path, want 1420", p.s.MTU())
	}
	// At the re-probe, the first two full-size probes are lost, the
	// control passes.
	base := len(p.sent)
	p.drop = func(n int, pr pmtuProbe) bool { return n >= base && n < base+4 && pr.Size == 1420 }
	p.run(2 * time.Minute)
	for _, m := range p.seen {
		if m != 1420 {
			t.Fatalf("the result changed after two lost probes: %v", p.seen)
		}
	}
	if p.s.Searching() {
		t.Error("still searching")
	}
}

func TestPMTUSearchRepeatedLossShrinks(t *testing.T) {
	p := newPathSim(t, 1420)
	p.run(time.Second)
	p.limit = 1216 // the peer moved behind a VPN
	p.s.restart(p.now)
	p.run(30 * time.Second)
	if m := p.s.MTU(); m > 1216 || m < 1208 {
		t.Errorf("result %d after the path shrank to 1216, want 1208..1216 (results: %v)", m, p.seen)
	}
}

func TestPMTUSearchGrowsAgain(t *testing.T) {
	p := newPathSim(t, 1216)
	p.run(30 * time.Second)
	p.limit = 1420
	p.run(2 * time.Minute) // a re-probe comes within a minute
	if m := p.s.MTU(); m != 1420 {
		t.Errorf("result %d after the path grew to 1420, want 1420 (results: %v)", m, p.seen)
	}
}

func TestPMTUSearchDownPathKeepsResultAndBacksOff(t *testing.T) {
	p := newPathSim(t, 1216)
	p.run(30 * time.Second)
	want := p.s.MTU()
	p.limit = 0 // nothing passes: the peer is gone
	p.s.restart(p.now)
	p.rounds = nil
	p.run(3 * time.Minute)
	if p.s.MTU() != want {
		t.Errorf("result %d after the path went down, want it kept at %d", p.s.MTU(), want)
	}
	if len(p.rounds) < 4 {
		t.Fatalf("only %d rounds in 3 minutes of a down path", len(p.rounds))
	}
	last := p.rounds[len(p.rounds)-1].Sub(p.rounds[len(p.rounds)-2])
	first := p.rounds[1].Sub(p.rounds[0])
	if last <= first || last > 32*time.Second {
		t.Errorf("rounds %v then %v apart: want growing gaps up to 30s", first, last)
	}
}

func TestPMTUSearchReprobeIsCheap(t *testing.T) {
	p := newPathSim(t, 1216)
	for p.s.Searching() {
		p.run(10 * time.Millisecond)
	}
	first := p.s.MTU()
	p.rounds = nil
	p.run(59 * time.Second)
	if len(p.rounds) != 0 {
		t.Fatalf("%d rounds before the re-probe is due", len(p.rounds))
	}
	p.run(30 * time.Second)
	// The last result passes (1 round), the size that failed fails
	// (Losses rounds); nothing else.
	if want := 1 + defaultPMTUConfig(1420).Losses; len(p.rounds) != want {
		t.Errorf("a re-probe of an unchanged path took %d rounds, want %d", len(p.rounds), want)
	}
	if p.s.MTU() != first {
		t.Errorf("result %d after a re-probe of an unchanged path, want %d", p.s.MTU(), first)
	}
}

func TestPMTUSearchIgnoresStaleEchoes(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newPMTUSearch(defaultPMTUConfig(1420), now)
	probes := s.poll(now)
	if len(probes) != 2 || probes[0].Size != 1420 || probes[1].Size != 576 {
		t.Fatalf("first round %v, want 1420 and the 576 control", probes)
	}
	s.restart(now) // the endpoint changed
	if s.echoed(probes[0].Round, 1420, now) {
		t.Error("an echo of a round from before the restart ended the new round")
	}
	if s.MTU() != 0 {
		t.Errorf("result %d from a stale echo", s.MTU())
	}
}
