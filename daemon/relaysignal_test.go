package daemon

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// simNet runs the relay protocol of several nodes against each other:
// their direct paths (cut or not), deaths, and a gossip that delivers
// each message to its live addressee, or loses it with probability loss.
// Messages go through their wire form, signed and checked.
type simNet struct {
	t      *testing.T
	now    time.Time
	nodes  map[string]*relaySignal
	keys   map[string]wgtypes.Key
	names  []string
	cut    map[[2]string]bool
	blind  map[[2]string]bool // (n, p): n cannot reach p, though p reaches n
	hidden map[[2]string]bool // (n, p): n's members lack p (p falsely declared dead there)
	dead   map[string]bool
	refuse map[string]bool // nodes that do not forward
	loss   float64
	drop   func(from string, m relayMsg) bool // messages lost on purpose; nil: none
	rng    *rand.Rand
	sent   int
}

func newSimNet(t *testing.T, n int) *simNet {
	t.Helper()
	s := &simNet{t: t, now: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC), nodes: map[string]*relaySignal{},
		keys: map[string]wgtypes.Key{}, cut: map[[2]string]bool{}, blind: map[[2]string]bool{}, hidden: map[[2]string]bool{}, dead: map[string]bool{}, refuse: map[string]bool{},
		rng: rand.New(rand.NewPCG(1, 2))}
	for i := range n {
		s.add(fmt.Sprintf("node%02d", i+1))
	}
	s.round() // every node knows the members before the first cut
	return s
}

func (s *simNet) add(name string) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		s.t.Fatal(err)
	}
	cfg := defaultRelaySignalConfig(name, s.now)
	cfg.Accept = func(string, string) bool { return !s.refuse[name] }
	s.nodes[name], s.keys[name] = newRelaySignal(cfg), k
	s.names = append(s.names, name)
	slices.Sort(s.names)
}

func (s *simNet) setCut(x, y string, cut bool) {
	a, b := pairOf(x, y)
	s.cut[[2]string{a, b}] = cut
}

func (s *simNet) isCut(x, y string) bool {
	a, b := pairOf(x, y)
	return s.cut[[2]string{a, b}]
}

// round is 100 ms of every live node: its view, its step, its messages.
func (s *simNet) round() {
	s.now = s.now.Add(100 * time.Millisecond)
	var live []string
	for _, n := range s.names {
		if !s.dead[n] {
			live = append(live, n)
		}
	}
	for _, n := range live {
		var un []string
		for _, p := range live {
			if p != n && (s.isCut(n, p) || s.blind[[2]string{n, p}]) {
				un = append(un, p)
			}
		}
		var members []string
		for _, p := range live {
			if !s.hidden[[2]string{n, p}] {
				members = append(members, p)
			}
		}
		st := s.nodes[n]
		st.update(members, un, s.now)
		st.step(s.now)
		for _, m := range st.outgoing(s.now) {
			s.sent++
			if s.dead[m.To] || s.rng.Float64() < s.loss || s.drop != nil && s.drop(n, m) {
				continue
			}
			key, err := relayMACKey(s.keys[n], s.keys[m.To].PublicKey())
			if err != nil {
				s.t.Fatal(err)
			}
			wire := encodeRelayMsg(m, n, key)
			back, err := relayMACKey(s.keys[m.To], s.keys[n].PublicKey())
			if err != nil {
				s.t.Fatal(err)
			}
			got, err := decodeRelayMsg(wire, n, back)
			if err != nil {
				s.t.Fatalf("%s -> %s: %v", n, m.To, err)
			}
			s.nodes[m.To].receive(n, got, s.now)
		}
	}
}

// until runs rounds until cond holds, for at most d of simulated time.
func (s *simNet) until(d time.Duration, cond func() error) {
	s.t.Helper()
	end := s.now.Add(d)
	var err error
	for s.now.Before(end) {
		s.round()
		if err = cond(); err == nil {
			return
		}
	}
	s.t.Fatalf("after %v: %v", d, err)
}

// agreed is the relay both ends of {a, b} route through, or an error if
// they do not agree on one.
func (s *simNet) agreed(a, b string) (string, error) {
	va, vb := s.nodes[a].relayOf(b), s.nodes[b].relayOf(a)
	if va == "" || va != vb {
		return "", fmt.Errorf("%s relays %s via %q, %s relays %s via %q", a, b, va, b, a, vb)
	}
	return va, nil
}

func (s *simNet) allRelayed(x string, peers []string) error {
	for _, p := range peers {
		if _, err := s.agreed(x, p); err != nil {
			return err
		}
	}
	return nil
}

func (s *simNet) direct(a, b string) error {
	if va, vb := s.nodes[a].relayOf(b), s.nodes[b].relayOf(a); va != "" || vb != "" {
		return fmt.Errorf("%s relays %s via %q, %s relays %s via %q", a, b, va, b, a, vb)
	}
	if s.nodes[a].cut(b) || s.nodes[b].cut(a) {
		return fmt.Errorf("%s-%s still judged cut", a, b)
	}
	return nil
}

func TestRelaySignalOnePair(t *testing.T) {
	for _, loss := range []float64{0, 0.3} {
		t.Run(fmt.Sprintf("loss %.0f%%", 100*loss), func(t *testing.T) {
			s := newSimNet(t, 5)
			s.loss = loss
			s.until(time.Second, func() error { return nil })
			s.setCut("node01", "node02", true)
			s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
			via, _ := s.agreed("node01", "node02")
			// Every candidate reaches both: the relay is the first by rank.
			if want := rankRelays("node01", "node02", []string{"node03", "node04", "node05"})[0]; via != want {
				t.Errorf("relayed via %s, want the first by rendezvous rank, %s", via, want)
			}
			// Nothing is left to send once everything is acknowledged.
			s.loss = 0
			s.until(10*time.Second, func() error {
				for _, n := range s.names {
					if k := s.nodes[n].out.len(); k > 0 {
						return fmt.Errorf("%s has %d messages unacknowledged", n, k)
					}
				}
				return nil
			})
			if got := s.nodes[via].serves(); got != 1 {
				t.Errorf("the relay %s serves %d pairs, want 1", via, got)
			}
			s.setCut("node01", "node02", false)
			s.until(10*time.Second, func() error { return s.direct("node01", "node02") })
		})
	}
}

// TestRelaySignalCutSeenByOneEnd: only the higher end sees the cut (its
// probes fail, the other's still pass); its report tells the proposer.
func TestRelaySignalCutSeenByOneEnd(t *testing.T) {
	s := newSimNet(t, 4)
	// node02 cannot reach node01, node01 believes it reaches node02.
	s.blind[[2]string{"node02", "node01"}] = true
	s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
	delete(s.blind, [2]string{"node02", "node01"})
	s.until(10*time.Second, func() error { return s.direct("node01", "node02") })
}

func TestRelaySignalRefusal(t *testing.T) {
	s := newSimNet(t, 6)
	cands := []string{"node03", "node04", "node05", "node06"}
	ranked := rankRelays("node01", "node02", cands)
	s.refuse[ranked[0]] = true
	s.setCut("node01", "node02", true)
	s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
	if via, _ := s.agreed("node01", "node02"); via != ranked[1] {
		t.Errorf("relayed via %s, want %s, the next after %s, which refuses", via, ranked[1], ranked[0])
	}
	if s.nodes["node01"].refusals == 0 {
		t.Error("the proposer saw no refusal")
	}
}

func TestRelaySignalRelayDies(t *testing.T) {
	s := newSimNet(t, 6)
	s.setCut("node01", "node02", true)
	s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
	first, _ := s.agreed("node01", "node02")
	s.dead[first] = true
	s.until(10*time.Second, func() error {
		via, err := s.agreed("node01", "node02")
		if err == nil && via == first {
			return fmt.Errorf("still via the dead %s", first)
		}
		return err
	})
	second, _ := s.agreed("node01", "node02")
	cands := []string{"node03", "node04", "node05", "node06"}
	cands = slices.DeleteFunc(cands, func(c string) bool { return c == first })
	if want := rankRelays("node01", "node02", cands)[0]; second != want {
		t.Errorf("after %s died: via %s, want %s", first, second, want)
	}
}

// TestRelaySignalRelayLosesPath: a relay that can no longer reach an end
// withdraws, and the ends move to another.
func TestRelaySignalRelayLosesPath(t *testing.T) {
	s := newSimNet(t, 5)
	s.setCut("node01", "node02", true)
	s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
	first, _ := s.agreed("node01", "node02")
	s.setCut(first, "node02", true)
	s.until(10*time.Second, func() error {
		via, err := s.agreed("node01", "node02")
		if err == nil && via == first {
			return fmt.Errorf("still via %s, which lost its path to node02", first)
		}
		return err
	})
	if s.nodes[first].serves() != 0 {
		t.Errorf("%s still serves the pair after losing a path", first)
	}
}

// TestRelaySignalOneNodeCutFromMost is the 25-node case: node01 reaches
// only node24 and node25. Every cut pair is relayed, both ends agree,
// through one of the two, and the pairs spread over both.
func TestRelaySignalOneNodeCutFromMost(t *testing.T) {
	for _, loss := range []float64{0, 0.5} {
		t.Run(fmt.Sprintf("loss %.0f%%", 100*loss), func(t *testing.T) {
			s := newSimNet(t, 25)
			s.loss = loss
			x := "node01"
			var cut []string
			for _, n := range s.names[1:23] {
				s.setCut(x, n, true)
				cut = append(cut, n)
			}
			s.until(60*time.Second, func() error { return s.allRelayed(x, cut) })
			used := map[string]int{}
			for _, p := range cut {
				via, _ := s.agreed(x, p)
				if via != "node24" && via != "node25" {
					t.Errorf("%s-%s via %s, which cannot reach %s", x, p, via, x)
				}
				used[via]++
			}
			if len(used) < 2 {
				t.Errorf("every pair through one relay: %v", used)
			}
			t.Logf("relays %v after %d messages", used, s.sent)
		})
	}
}

// TestRelaySignalRestartedEnd: an end that restarts (a new node of the same
// name, its state lost) is relayed again.
func TestRelaySignalRestartedEnd(t *testing.T) {
	s := newSimNet(t, 4)
	s.setCut("node01", "node02", true)
	s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
	s.dead["node02"] = true
	s.round()
	s.round()
	delete(s.dead, "node02")
	s.nodes["node02"] = newRelaySignal(defaultRelaySignalConfig("node02", s.now))
	s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
}

func TestOutboxBackoff(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	o := newOutbox(retryConfig{First: 100 * time.Millisecond, Max: 400 * time.Millisecond}, 0)
	o.put(relayMsg{Kind: kindPropose, To: "r", A: "a", B: "b", Epoch: 1}, t0)
	var tries []time.Duration
	for at := t0; at.Before(t0.Add(2 * time.Second)); at = at.Add(10 * time.Millisecond) {
		if len(o.due(at)) > 0 {
			tries = append(tries, at.Sub(t0))
		}
	}
	want := []time.Duration{0, 100, 300, 700, 1100, 1500, 1900}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(tries, want) {
		t.Errorf("tried at %v, want %v (doubling from 100 ms, at most 400 ms apart)", tries, want)
	}

	// A newer message of the same key replaces the waiting one.
	o.put(relayMsg{Kind: kindPropose, To: "r", A: "a", B: "b", Epoch: 2}, t0)
	if o.len() != 1 {
		t.Fatalf("%d waiting, want 1", o.len())
	}
	m := o.due(t0)[0]
	if m.Epoch != 2 {
		t.Errorf("waiting epoch %d, want 2", m.Epoch)
	}
	if o.ack("other", m.ID) || o.ack("r", m.ID+1) {
		t.Error("an ack from another node or of another id counted")
	}
	if !o.ack("r", m.ID) || o.len() != 0 {
		t.Error("the ack did not remove the message")
	}
	if o.ack("r", m.ID) {
		t.Error("a duplicate ack counted")
	}
	o.put(relayMsg{Kind: kindReport, To: "r", Epoch: 1}, t0)
	o.put(relayMsg{Kind: kindConfirm, To: "r", A: "a", B: "b"}, t0)
	o.put(relayMsg{Kind: kindConfirm, To: "q", A: "a", B: "b"}, t0)
	o.drop("r")
	if o.len() != 1 {
		t.Errorf("%d waiting after dropping r, want 1", o.len())
	}
}

// TestRelaySignalIdempotent: a message delivered twice, or an old one
// after a newer, changes nothing.
func TestRelaySignalIdempotent(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	b := newRelaySignal(defaultRelaySignalConfig("b", t0))
	b.update([]string{"a", "r1", "r2"}, []string{"a"}, t0)
	confirm := func(from string, epoch uint64) {
		b.receive(from, relayMsg{Kind: kindConfirm, To: "b", A: "a", B: "b", Epoch: epoch, ID: epoch}, t0)
	}
	confirm("r1", 5)
	confirm("r2", 7)
	confirm("r1", 5)
	if got := b.relayOf("a"); got != "r2" {
		t.Errorf("relay %q after confirmations 5, 7, 5 again; want r2 (the newest)", got)
	}
	b.receive("r1", relayMsg{Kind: kindWithdraw, To: "b", A: "a", B: "b", Epoch: 5}, t0)
	if got := b.relayOf("a"); got != "r2" {
		t.Errorf("relay %q after an old relay withdrew; want r2", got)
	}
	report := func(version uint64, names ...string) {
		b.receive("a", relayMsg{Kind: kindReport, To: "b", Epoch: version, Names: names}, t0)
	}
	report(3, "b", "r1")
	report(2)
	if !b.reports["a"].unreachable["r1"] {
		t.Error("an older report replaced a newer")
	}
	// Every message but an ack is acknowledged, each time.
	if got := len(b.outgoing(t0)); got < 6 {
		t.Errorf("%d messages out, want an ack for each of the 6 received at least", got)
	}
}

// TestRelaySignalShortAbsence: an end judged dead for a moment (a cut-off
// node is often suspected) is relayed again, confirmed anew, both ends
// agreeing (through the same relay unless it still missed the end when
// asked, as here, where it hears of the return after the proposal).
func TestRelaySignalShortAbsence(t *testing.T) {
	s := newSimNet(t, 5)
	s.setCut("node01", "node02", true)
	s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
	first, _ := s.agreed("node01", "node02")
	before := s.nodes["node02"].pairs["node01"].epoch
	s.dead["node02"] = true
	s.round()
	s.round()
	delete(s.dead, "node02")
	s.until(10*time.Second, func() error {
		if _, err := s.agreed("node01", "node02"); err != nil {
			return err
		}
		if s.nodes["node02"].pairs["node01"].epoch == before {
			return fmt.Errorf("no new confirmation yet")
		}
		return nil
	})
	via, _ := s.agreed("node01", "node02")
	t.Logf("relayed via %s before the absence, via %s after", first, via)
}

// TestRelaySignalMissedWithdrawal: the relay withdraws from a pair for a
// moment, and the withdrawal reaches only one end. The proposer's renewal
// of the relay brings both ends back to the same relay.
func TestRelaySignalMissedWithdrawal(t *testing.T) {
	s := newSimNet(t, 5)
	s.setCut("node01", "node02", true)
	s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
	via, _ := s.agreed("node01", "node02")
	s.drop = func(from string, m relayMsg) bool {
		return from == via && m.Kind == kindWithdraw && m.To == "node01"
	}
	// The relay loses its path to node02 for a moment: it withdraws.
	s.blind[[2]string{via, "node02"}] = true
	s.until(5*time.Second, func() error {
		if got := s.nodes["node02"].relayOf("node01"); got != "" {
			return fmt.Errorf("node02 still relays node01 via %s", got)
		}
		return nil
	})
	delete(s.blind, [2]string{via, "node02"})
	if got := s.nodes["node01"].relayOf("node02"); got != via {
		t.Fatalf("node01 relays node02 via %q, want %s (the withdrawal to it was lost)", got, via)
	}
	cfg := defaultRelaySignalConfig("node01", s.now)
	s.until(cfg.RelayRefresh+cfg.ProposalTimeout+5*time.Second, func() error {
		_, err := s.agreed("node01", "node02")
		return err
	})
}

// TestRelaySignalEndFlapsAtRelay: the relay sees one end falsely dead for
// a moment (a node behind NAT is often suspected and refutes). It keeps
// carrying the pair, so neither end loses its relay.
func TestRelaySignalEndFlapsAtRelay(t *testing.T) {
	s := newSimNet(t, 5)
	s.setCut("node01", "node02", true)
	s.until(10*time.Second, func() error { return s.allRelayed("node01", []string{"node02"}) })
	via, _ := s.agreed("node01", "node02")
	s.hidden[[2]string{via, "node02"}] = true
	for range 15 { // 1.5 s
		s.round()
		if _, err := s.agreed("node01", "node02"); err != nil {
			t.Fatalf("while %s saw node02 gone: %v", via, err)
		}
	}
	delete(s.hidden, [2]string{via, "node02"})
	for range 120 { // 12 s: past a renewal of the relay
		s.round()
		got, err := s.agreed("node01", "node02")
		if err != nil || got != via {
			t.Fatalf("after node02 came back at %s: relayed via %q (%v), want %s throughout", via, got, err, via)
		}
	}
}
