package daemon

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// probePort is the UDP port of the path probes (liveness.go) on the probe
// addresses. It exists only on the overlay, never on the underlay.
const probePort = 6785

var (
	descPeerRTT  = prometheus.NewDesc("weft_peer_rtt_seconds", "Median round trip of the latest probes of the direct path to the peer; absent until one was answered.", []string{"peer"}, nil)
	descPeerLoss = prometheus.NewDesc("weft_peer_probe_loss_ratio", "Share of the latest probes (up to 60) of the direct path to the peer that were lost (0 to 1).", []string{"peer"}, nil)
	descDirect   = prometheus.NewDesc("weft_peers_direct_ratio", "Share of the live peers this node reaches directly (0 to 1; 1 without peers).", nil, nil)
)

// pathResult is the judgement of the direct path to one peer.
type pathResult struct {
	State  pathState
	Since  time.Time
	RTT    time.Duration // median; 0 before any answer
	Loss   float64       // of the latest Probes probes
	Probes int
}

// pathProber probes the direct path to every target from this node's
// probe address and answers the probes of its peers. Run owns the
// judgements; the setters and getters may be called from any goroutine.
type pathProber struct {
	cfg      livenessConfig
	log      *slog.Logger
	onChange func() // called (from Run) when a path's state changed
	// onSignal takes a relay signalling frame's sender and message (its
	// own), from the socket's reader goroutine; it must return quickly.
	onSignal func(from string, msg []byte)

	mu       sync.Mutex
	self     netip.Addr                // this node's probe address; probes wait for it
	targets  map[string]netip.Addr     // peer → its probe address
	seenAt   map[netip.Addr]string     // a peer's probe address → where WireGuard sees that peer
	results  map[string]pathResult     // by peer
	observed map[string]netip.AddrPort // by peer: where it sees this node
	wake     chan struct{}
	sock     *probeSocket // the bound socket, nil before; for SendSignal
}

func newPathProber(cfg livenessConfig, log *slog.Logger, onChange func()) *pathProber {
	return &pathProber{cfg: cfg, log: log, onChange: onChange, targets: map[string]netip.Addr{},
		seenAt: map[netip.Addr]string{}, results: map[string]pathResult{}, observed: map[string]netip.AddrPort{},
		wake: make(chan struct{}, 1)}
}

// Set replaces this node's probe address, the peers to probe (by name, at
// their probe addresses) and where WireGuard sees each peer (by its probe
// address), which answers tell.
func (p *pathProber) Set(self netip.Addr, targets map[string]netip.Addr, seenAt map[netip.Addr]string) {
	p.mu.Lock()
	changed := self != p.self || !maps.Equal(targets, p.targets)
	p.self, p.targets, p.seenAt = self, maps.Clone(targets), maps.Clone(seenAt)
	p.mu.Unlock()
	if changed {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// Results returns the judgement of every probed path, by peer.
func (p *pathProber) Results() map[string]pathResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.results)
}

// PathUp reports whether the probes judge the direct path to peer up:
// it answered, so it routes this node's probe address back.
func (p *pathProber) PathUp(peer string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.results[peer].State == pathUp
}

// Observed returns where each peer that answered sees this node's
// WireGuard endpoint, by peer.
func (p *pathProber) Observed() map[string]netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.observed)
}

// probeSocket is the bound socket and its reader.
type probeSocket struct {
	conn *net.UDPConn
	addr netip.Addr
	done chan struct{}
}

func (s *probeSocket) close() {
	if s == nil {
		return
	}
	s.conn.Close()
	<-s.done
}

// Run probes and answers until ctx ends.
func (p *pathProber) Run(ctx context.Context) error {
	msgs := make(chan probeMsg, 256)
	var sock *probeSocket
	defer func() {
		p.setSocket(nil)
		sock.close()
	}()
	lives := map[string]*liveness{}
	addrs := map[string]netip.Addr{}
	sent := map[uint64]string{} // nonce → peer
	sentAt := map[uint64]time.Time{}
	bindFailed := ""
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			p.handle(sock, m, sent, lives, addrs)
		case <-p.wake:
		case <-tick.C:
		}
		now := time.Now()
		p.mu.Lock()
		self, targets := p.self, maps.Clone(p.targets)
		p.mu.Unlock()
		if sock != nil && sock.addr != self {
			p.setSocket(nil)
			sock.close()
			sock = nil
		}
		if sock == nil && self.IsValid() {
			s, err := bindProbes(self, msgs, p.onSignal)
			switch {
			case err != nil && err.Error() != bindFailed:
				p.log.Debug("probe socket not bound yet", "addr", self, "err", err)
				bindFailed = err.Error()
			case err == nil:
				sock, bindFailed = s, ""
				p.setSocket(s)
			}
		}
		for name, addr := range targets {
			if lives[name] == nil || addrs[name] != addr {
				lives[name], addrs[name] = newLiveness(p.cfg, now), addr
			}
		}
		for name := range lives {
			if _, ok := targets[name]; !ok {
				delete(lives, name)
				delete(addrs, name)
			}
		}
		if sock != nil {
			for name, l := range lives {
				if !l.poll(now) {
					continue
				}
				var nb [8]byte
				rand.Read(nb[:])
				nonce := binary.BigEndian.Uint64(nb[:])
				at := time.Now()
				sent[nonce], sentAt[nonce] = name, at
				l.sent(nonce, at)
				if err := sock.send(addrs[name], probeRequest, nonce, ""); err != nil {
					p.log.Debug("probe not sent", "peer", name, "err", err)
				}
			}
		}
		for nonce, at := range sentAt {
			if now.Sub(at) > 2*p.cfg.Timeout {
				delete(sent, nonce)
				delete(sentAt, nonce)
			}
		}
		p.publish(lives)
	}
}

// handle answers a probe or records an answer.
func (p *pathProber) handle(sock *probeSocket, m probeMsg, sent map[uint64]string, lives map[string]*liveness, addrs map[string]netip.Addr) {
	switch m.typ {
	case probeRequest:
		p.mu.Lock()
		seen := p.seenAt[m.from.Addr()]
		p.mu.Unlock()
		if sock != nil {
			if err := sock.sendTo(m.from, probeAnswer, m.nonce, seen); err != nil {
				p.log.Debug("probe not answered", "to", m.from, "err", err)
			}
		}
	case probeAnswer:
		name, ok := sent[m.nonce]
		if !ok || addrs[name] != m.from.Addr() || lives[name] == nil {
			return
		}
		delete(sent, m.nonce)
		lives[name].answer(m.nonce, m.at)
		if ap, err := netip.ParseAddrPort(m.endpoint); err == nil {
			p.mu.Lock()
			p.observed[name] = ap
			p.mu.Unlock()
		}
	}
}

// publish makes the judgements visible and tells when a state changed.
func (p *pathProber) publish(lives map[string]*liveness) {
	res := make(map[string]pathResult, len(lives))
	for name, l := range lives {
		st, since := l.State()
		loss, n := l.Loss()
		res[name] = pathResult{State: st, Since: since, RTT: l.RTT(), Loss: loss, Probes: n}
	}
	p.mu.Lock()
	old := p.results
	p.results = res
	for name := range p.observed {
		if _, ok := res[name]; !ok {
			delete(p.observed, name)
		}
	}
	p.mu.Unlock()
	changed := false
	for name, r := range res {
		if o, ok := old[name]; ok && o.State != r.State {
			p.log.Info("direct path judged", "peer", name, "state", r.State.String(), "was", o.State.String())
			changed = true
		}
	}
	if changed && p.onChange != nil {
		p.onChange()
	}
}

func (p *pathProber) setSocket(s *probeSocket) {
	p.mu.Lock()
	p.sock = s
	p.mu.Unlock()
}

// SendSignal sends a relay signalling message from this node (named from)
// to the probe address to, through the tunnel. It fails before the probe
// socket is bound.
func (p *pathProber) SendSignal(to netip.Addr, from string, msg []byte) error {
	p.mu.Lock()
	s := p.sock
	p.mu.Unlock()
	if s == nil {
		return errors.New("probe socket not bound yet")
	}
	_, err := s.conn.WriteToUDPAddrPort(encodeSignal(from, msg), netip.AddrPortFrom(to, probePort))
	return err
}

// bindProbes binds the probe port on addr and reads messages into out,
// and signalling frames into onSignal (when set), until the socket is
// closed.
func bindProbes(addr netip.Addr, out chan<- probeMsg, onSignal func(string, []byte)) (*probeSocket, error) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, probePort)))
	if err != nil {
		return nil, err
	}
	s := &probeSocket{conn: conn, addr: addr, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, maxProbeSignal+1)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			if from, msg, ok := parseSignal(buf[:n]); ok {
				if onSignal != nil {
					onSignal(from, append([]byte(nil), msg...))
				}
				continue
			}
			m, ok := parseProbe(buf[:n])
			if !ok {
				continue
			}
			m.from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			m.at = time.Now() // the RTT ends here, not when the loop gets to it
			select {
			case out <- m:
			default: // the loop is busy: a lost probe
			}
		}
	}()
	return s, nil
}

func (s *probeSocket) send(to netip.Addr, typ byte, nonce uint64, endpoint string) error {
	return s.sendTo(netip.AddrPortFrom(to, probePort), typ, nonce, endpoint)
}

func (s *probeSocket) sendTo(to netip.AddrPort, typ byte, nonce uint64, endpoint string) error {
	_, err := s.conn.WriteToUDPAddrPort(encodeProbe(typ, nonce, endpoint), to)
	return err
}
