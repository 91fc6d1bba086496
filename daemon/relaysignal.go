package daemon

import (
	"maps"
	"slices"
	"time"
)

// relaySignal is one node's side of the relay protocol: what it tells its
// peers of its direct paths, and which relay carries each pair of which it
// is an end. Pure: no I/O, no clock, no locks; its owner (relaySignaller)
// feeds it the node's own view (update), the messages that arrive
// (receive) and the time (step), and sends what outgoing returns.
//
// Reports. A node tells each peer with which its pair is cut, in its own
// view, the whole list of the peers it cannot reach directly (kindReport,
// versioned), and tells it again when the list changes, until the pair is
// direct and the peer holds a list without it. A pair {A, B} is cut when
// either end lists the other; both ends compute that from the same two
// lists.
//
// Relays. The lower-named end of a cut pair (the proposer) ranks the nodes
// that, by its own probes and the other end's report, reach both ends, by
// rendezvous hash of the pair and the candidate (rankRelays), and proposes
// the pair to the first it has not heard refuse lately (kindPropose, with a
// new epoch). The candidate accepts when its own probes reach both ends and
// it forwards for them, and then confirms to both ends (kindConfirm), or
// refuses to the proposer (kindRefuse), who proposes to the next. Both ends
// route the pair through the relay whose confirmation carries the newest
// epoch: one confirmation from one node, so they agree. A relay that loses
// a path to an end withdraws (kindWithdraw); a relay that dies or leaves is
// dropped by both ends at once; a proposal unanswered for ProposalTimeout
// counts as refused. In each case the proposer proposes the next.
//
//	       cut                  confirm(e)                 withdraw(e), relay gone
//	direct ───▶ proposed(R, e) ───────────▶ relayed via R ──────────────────────▶ proposed(R', e')
//	   ▲            │ refuse(e), timeout        │ direct again
//	   │            ▼                           ▼
//	   │        proposed(R', e')              direct
//
// Every message but an ack is retried until acknowledged (outbox) and is
// idempotent, so losses, duplicates and reordering change nothing but time.
type relaySignal struct {
	cfg      relaySignalConfig
	members  map[string]bool       // live peers
	unreach  map[string]bool       // the peers this node cannot reach directly
	version  uint64                // of this node's list
	reports  map[string]peerReport // each peer's latest list, by peer
	sent     map[string]sentReport // the list each peer was last sent
	pairs    map[string]*pairRelay // by the other end
	serving  map[[2]string]uint64  // pairs this node relays → epoch
	gone     map[string]time.Time  // peers that left the members, since when
	out      *outbox
	acks     []relayMsg // to send once
	counter  uint64     // the last epoch or version given
	refusals int        // refusals and timeouts seen, for tests and status
}

// relaySignalConfig tunes the protocol; see defaultRelaySignalConfig.
type relaySignalConfig struct {
	Self            string
	Retry           retryConfig
	ProposalTimeout time.Duration // an unanswered proposal counts as refused after this
	RefusalTTL      time.Duration // a candidate that refused is asked again after this
	ReportRefresh   time.Duration // a list is sent again this often while its pair is cut
	RelayRefresh    time.Duration // the proposer proposes its pair to the relay in use again this often
	GoneTTL         time.Duration // the state of a peer gone from the members is kept this long
	// Accept reports whether this node forwards for the pair; nil: it does.
	Accept func(a, b string) bool
	// Start seeds epochs and versions, so those of a restarted node are
	// newer than those it gave before.
	Start time.Time
}

func defaultRelaySignalConfig(self string, start time.Time) relaySignalConfig {
	return relaySignalConfig{Self: self, Retry: defaultRetryConfig(), ProposalTimeout: 4 * time.Second,
		RefusalTTL: 5 * time.Second, ReportRefresh: 30 * time.Second, RelayRefresh: 10 * time.Second, GoneTTL: 30 * time.Second, Start: start}
}

type peerReport struct {
	version     uint64
	unreachable map[string]bool
}

type sentReport struct {
	version uint64
	listed  bool // the list named the peer
	at      time.Time
}

// pairRelay is this node's state of the pair {self, peer}.
type pairRelay struct {
	via         string    // confirmed relay, "" if none
	epoch       uint64    // of the confirmation
	confirmedAt time.Time // when via last confirmed
	// The proposer's pending proposal, and candidates that refused.
	proposed   string
	propEpoch  uint64
	proposedAt time.Time
	refused    map[string]time.Time
}

func newRelaySignal(cfg relaySignalConfig) *relaySignal {
	start := uint64(cfg.Start.UnixNano())
	return &relaySignal{cfg: cfg, members: map[string]bool{}, unreach: map[string]bool{},
		reports: map[string]peerReport{}, sent: map[string]sentReport{}, pairs: map[string]*pairRelay{},
		serving: map[[2]string]uint64{}, gone: map[string]time.Time{}, out: newOutbox(cfg.Retry, start), counter: start, version: start}
}

func (s *relaySignal) next() uint64 {
	s.counter++
	return s.counter
}

// update gives the live peers and those this node cannot reach directly.
// The state of a peer that is gone is kept for GoneTTL, so that a short
// false death (a cut-off node is often suspected) costs nothing but the
// gap; when it comes back, it is sent this node's list again and, by the
// proposer, a fresh proposal to the relay in use, in case it restarted and
// lost its own state.
func (s *relaySignal) update(members, unreachable []string, now time.Time) {
	live := map[string]bool{}
	for _, m := range members {
		if m != s.cfg.Self {
			live[m] = true
		}
	}
	for m := range s.members {
		if !live[m] {
			s.out.drop(m)
			s.gone[m] = now
		}
	}
	for m := range live {
		if _, was := s.gone[m]; !was {
			continue
		}
		delete(s.gone, m)
		delete(s.sent, m)
		if pr := s.pairs[m]; pr != nil && s.cfg.Self < m && pr.via != "" && live[pr.via] {
			pr.proposed, pr.propEpoch, pr.proposedAt = pr.via, s.next(), now
			s.out.put(relayMsg{Kind: kindPropose, To: pr.via, A: s.cfg.Self, B: m, Epoch: pr.propEpoch}, now)
		}
	}
	for m, at := range s.gone {
		if now.Sub(at) >= s.cfg.GoneTTL {
			delete(s.gone, m)
			delete(s.reports, m)
			delete(s.sent, m)
			delete(s.pairs, m)
		}
	}
	s.members = live
	un := map[string]bool{}
	for _, u := range unreachable {
		un[u] = true
	}
	if !maps.Equal(un, s.unreach) {
		s.unreach = un
		s.version = s.next()
	}
}

// cut reports whether the pair {self, peer} has no direct path: either
// end lists the other.
func (s *relaySignal) cut(peer string) bool {
	return s.unreach[peer] || s.reports[peer].unreachable[s.cfg.Self]
}

// relayOf is the relay of the pair {self, peer}: "" while it is direct or
// no relay has confirmed.
func (s *relaySignal) relayOf(peer string) string {
	pr := s.pairs[peer]
	if pr == nil || pr.via == "" || !s.members[pr.via] || !s.cut(peer) {
		return ""
	}
	return pr.via
}

// candidates are the nodes that reach both ends of {self, peer}, as far as
// this node knows: live, not on its own list nor on the peer's.
func (s *relaySignal) candidates(peer string) []string {
	var out []string
	rep := s.reports[peer].unreachable
	for m := range s.members {
		if m != peer && !s.unreach[m] && !rep[m] {
			out = append(out, m)
		}
	}
	return out
}

func pairOf(x, y string) (a, b string) {
	if x < y {
		return x, y
	}
	return y, x
}

func (s *relaySignal) pair(peer string) *pairRelay {
	pr := s.pairs[peer]
	if pr == nil {
		pr = &pairRelay{refused: map[string]time.Time{}}
		s.pairs[peer] = pr
	}
	return pr
}

// step sends reports where they are due, proposes relays for the cut
// pairs this node proposes for, and withdraws from pairs it can no longer
// relay.
func (s *relaySignal) step(now time.Time) {
	for _, p := range slices.Sorted(maps.Keys(s.members)) {
		s.stepReport(p, now)
		if s.cfg.Self < p {
			s.stepProposer(p, now)
		} else if pr := s.pairs[p]; pr != nil && pr.via != "" && !s.members[pr.via] {
			pr.via = ""
		}
	}
	for pair, epoch := range s.serving {
		if s.canRelay(pair[0], pair[1], true) {
			continue
		}
		delete(s.serving, pair)
		for _, end := range pair {
			if s.members[end] {
				s.out.put(relayMsg{Kind: kindWithdraw, To: end, A: pair[0], B: pair[1], Epoch: epoch}, now)
			}
		}
	}
}

func (s *relaySignal) stepReport(p string, now time.Time) {
	last, ok := s.sent[p]
	cut := s.cut(p)
	switch {
	case cut && (!ok || last.version != s.version || now.Sub(last.at) >= s.cfg.ReportRefresh):
	case !cut && ok && last.listed && last.version != s.version:
	default:
		return
	}
	s.out.put(relayMsg{Kind: kindReport, To: p, Epoch: s.version, Names: slices.Sorted(maps.Keys(s.unreach))}, now)
	s.sent[p] = sentReport{version: s.version, listed: s.unreach[p], at: now}
}

func (s *relaySignal) stepProposer(p string, now time.Time) {
	pr := s.pairs[p]
	if !s.cut(p) {
		if pr != nil {
			delete(s.pairs, p)
		}
		return
	}
	pr = s.pair(p)
	if pr.via != "" {
		switch {
		case !s.members[pr.via] || s.unreach[pr.via] || s.reports[p].unreachable[pr.via]:
			pr.refused[pr.via] = now // it cannot carry the pair any more
			pr.via = ""
		case pr.proposed == "" && s.cfg.RelayRefresh > 0 && now.Sub(pr.confirmedAt) >= s.cfg.RelayRefresh:
			// Propose the pair to the relay again, as a lease: a withdrawal
			// or confirmation that one end missed (it was briefly gone from
			// the relay's members, say) would otherwise leave the two ends
			// routing through different relays, or one through none, for
			// good. The relay confirms to both ends again, or refuses.
			pr.proposed, pr.propEpoch, pr.proposedAt = pr.via, s.next(), now
			pr.confirmedAt = now
			s.out.put(relayMsg{Kind: kindPropose, To: pr.via, A: s.cfg.Self, B: p, Epoch: pr.propEpoch}, now)
			return
		case pr.proposed == "" || pr.proposed == pr.via && now.Sub(pr.proposedAt) < s.cfg.ProposalTimeout:
			return
		case pr.proposed == pr.via:
			pr.via = "" // the relay in use did not answer its renewal
		}
	}
	if pr.proposed != "" {
		if s.members[pr.proposed] && now.Sub(pr.proposedAt) < s.cfg.ProposalTimeout {
			return
		}
		pr.refused[pr.proposed] = now
		s.refusals++
		s.out.cancel(relayMsg{Kind: kindPropose, To: pr.proposed, A: s.cfg.Self, B: p})
		pr.proposed = ""
	}
	for c, at := range pr.refused {
		if now.Sub(at) >= s.cfg.RefusalTTL {
			delete(pr.refused, c)
		}
	}
	for _, c := range rankRelays(s.cfg.Self, p, s.candidates(p)) {
		if _, no := pr.refused[c]; no {
			continue
		}
		pr.proposed, pr.propEpoch, pr.proposedAt = c, s.next(), now
		s.out.put(relayMsg{Kind: kindPropose, To: c, A: s.cfg.Self, B: p, Epoch: pr.propEpoch}, now)
		return
	}
}

// canRelay reports whether this node can carry the pair (a, b): both are
// live, its own probes reach both, and it forwards for them. For a pair it
// already serves, an end briefly gone from the members (a node behind NAT
// is often suspected and refutes) still counts for GoneTTL, so such a flap
// does not withdraw the relay from both ends and leave the pair without
// one until it is proposed again.
func (s *relaySignal) canRelay(a, b string, serving bool) bool {
	for _, n := range []string{a, b} {
		if s.unreach[n] {
			return false
		}
		if _, briefly := s.gone[n]; !s.members[n] && !(serving && briefly) {
			return false
		}
	}
	return s.cfg.Accept == nil || s.cfg.Accept(a, b)
}

// receive handles a message from the node from (authenticated by its
// MAC) addressed to this node.
func (s *relaySignal) receive(from string, m relayMsg, now time.Time) {
	if m.Kind == kindAck {
		s.out.ack(from, m.Epoch)
		return
	}
	s.acks = append(s.acks, relayMsg{Kind: kindAck, To: from, Epoch: m.ID})
	switch m.Kind {
	case kindReport:
		if r, ok := s.reports[from]; !ok || m.Epoch > r.version {
			un := map[string]bool{}
			for _, n := range m.Names {
				un[n] = true
			}
			s.reports[from] = peerReport{version: m.Epoch, unreachable: un}
		}
	case kindPropose:
		s.receivePropose(from, m, now)
	case kindConfirm:
		peer, ok := s.otherEnd(m)
		if !ok {
			return
		}
		pr := s.pair(peer)
		if m.Epoch > pr.epoch || pr.via == "" && m.Epoch == pr.epoch {
			pr.via, pr.epoch, pr.confirmedAt = from, m.Epoch, now
		}
		if pr.proposed == from && pr.propEpoch == m.Epoch {
			pr.proposed = ""
		}
	case kindRefuse:
		peer, ok := s.otherEnd(m)
		if !ok {
			return
		}
		if pr := s.pairs[peer]; pr != nil && pr.proposed == from && pr.propEpoch == m.Epoch {
			pr.refused[from] = now
			pr.proposed = ""
			if pr.via == from {
				pr.via = "" // it no longer carries the pair
			}
			s.refusals++
		}
	case kindWithdraw:
		peer, ok := s.otherEnd(m)
		if !ok {
			return
		}
		if pr := s.pairs[peer]; pr != nil && pr.via == from && pr.epoch == m.Epoch {
			pr.via = ""
			pr.refused[from] = now
		}
	}
}

// otherEnd is the end of m's pair that is not this node.
func (s *relaySignal) otherEnd(m relayMsg) (string, bool) {
	switch s.cfg.Self {
	case m.A:
		return m.B, m.A < m.B
	case m.B:
		return m.A, m.A < m.B
	}
	return "", false
}

func (s *relaySignal) receivePropose(from string, m relayMsg, now time.Time) {
	if from != m.A || m.A >= m.B || s.cfg.Self == m.A || s.cfg.Self == m.B {
		return // only the lower end proposes, to a third node
	}
	key := [2]string{m.A, m.B}
	if cur, ok := s.serving[key]; ok && m.Epoch < cur {
		return // an old proposal, overtaken
	}
	_, serves := s.serving[key]
	if !s.canRelay(m.A, m.B, serves) {
		delete(s.serving, key)
		s.out.put(relayMsg{Kind: kindRefuse, To: m.A, A: m.A, B: m.B, Epoch: m.Epoch}, now)
		return
	}
	s.serving[key] = m.Epoch
	for _, end := range key {
		s.out.put(relayMsg{Kind: kindConfirm, To: end, A: m.A, B: m.B, Epoch: m.Epoch}, now)
	}
}

// outgoing returns the messages to send now: acks once, the others until
// acknowledged.
func (s *relaySignal) outgoing(now time.Time) []relayMsg {
	out := s.acks
	s.acks = nil
	return append(out, s.out.due(now)...)
}

// serves reports how many pairs this node relays.
func (s *relaySignal) serves() int { return len(s.serving) }
