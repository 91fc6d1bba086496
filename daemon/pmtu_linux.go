package daemon

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

var descPeerPMTU = prometheus.NewDesc("weft_peer_path_mtu_bytes",
	"Largest packet (IP total length) known to get through the tunnel to the peer; absent until measured.", []string{"peer"}, nil)

// pmtuTarget is a peer whose path is measured.
type pmtuTarget struct {
	Addr netip.Addr // the peer's tunnel address, where the echoes go
	// Path names the way there (the endpoint WireGuard uses, the relay);
	// when it changes the search starts over.
	Path string
}

// pmtuProber measures the path MTU to every target (see pmtu.go) with ICMP
// echoes (ICMPv6 to IPv6 tunnel addresses, in an IPv6-only cluster) from a
// raw socket that sets Don't Fragment and ignores what the kernel thinks
// the path MTU is (IP_PMTUDISC_PROBE), so the probes test the path, not
// the routes. Run owns the searches; SetTargets and Results may be called
// from any goroutine.
type pmtuProber struct {
	cfg      pmtuConfig
	log      *slog.Logger
	onChange func() // called (from Run) when a result changed

	mu      sync.Mutex
	targets map[string]pmtuTarget
	results map[string]int
	wake    chan struct{}
}

func newPMTUProber(cfg pmtuConfig, log *slog.Logger, onChange func()) *pmtuProber {
	return &pmtuProber{cfg: cfg, log: log, onChange: onChange,
		targets: map[string]pmtuTarget{}, results: map[string]int{}, wake: make(chan struct{}, 1)}
}

// SetTargets replaces the peers to measure, by name.
func (p *pmtuProber) SetTargets(t map[string]pmtuTarget) {
	p.mu.Lock()
	changed := !maps.Equal(p.targets, t)
	if changed {
		p.targets = maps.Clone(t)
	}
	p.mu.Unlock()
	if changed {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// Results returns the path MTU of every peer measured so far, by name.
func (p *pmtuProber) Results() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.results)
}

// pmtuEcho is an echo reply read from the socket.
type pmtuEcho struct {
	from netip.Addr
	seq  int
	size int // of the IP packet
}

// pmtuSent is what a probe in flight was for.
type pmtuSent struct {
	peer  string
	addr  netip.Addr
	round uint32
	size  int
	at    time.Time
}

// Run probes until ctx ends.
func (p *pmtuProber) Run(ctx context.Context) error {
	conn4, err := listenPMTU(pmtuIPv4)
	if err != nil {
		return err
	}
	// IPv6 peers (an IPv6-only cluster) are measured with ICMPv6 echoes;
	// a host without IPv6 has no such peers.
	conn6, err := listenPMTU(pmtuIPv6)
	if err != nil {
		p.log.Debug("no ICMPv6 socket for path MTU discovery; IPv6 peers are not measured", "err", err)
	}
	var idb [2]byte
	rand.Read(idb[:])
	id := int(binary.BigEndian.Uint16(idb[:]))
	echoes := make(chan pmtuEcho, 64)
	var wg sync.WaitGroup
	conns := map[pmtuFamily]*net.IPConn{pmtuIPv4: conn4}
	if conn6 != nil {
		conns[pmtuIPv6] = conn6
	}
	for f, c := range conns {
		wg.Go(func() { readPMTU(c, f, id, echoes) })
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()

	searches := map[string]*pmtuSearch{}
	targets := map[string]pmtuTarget{}
	sent := map[int]pmtuSent{}
	seq := 0
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		now := time.Now()
		select {
		case <-ctx.Done():
			return nil
		case e := <-echoes:
			s, ok := sent[e.seq]
			if !ok || s.addr != e.from || s.size != e.size {
				break
			}
			delete(sent, e.seq)
			if search := searches[s.peer]; search != nil {
				search.echoed(s.round, s.size, now)
			}
		case <-p.wake:
		case <-tick.C:
		}
		p.mu.Lock()
		want := maps.Clone(p.targets)
		p.mu.Unlock()
		for name, t := range want {
			old, ok := targets[name]
			switch {
			case !ok:
				searches[name] = newPMTUSearch(p.cfg, now)
			case old != t:
				p.log.Debug("path to peer changed; measuring its MTU again", "peer", name, "path", t.Path)
				searches[name].restart(now)
			}
		}
		for name := range searches {
			if _, ok := want[name]; !ok {
				delete(searches, name)
			}
		}
		targets = want
		for name, s := range searches {
			for _, pr := range s.poll(now) {
				seq = (seq + 1) & 0xffff
				sent[seq] = pmtuSent{peer: name, addr: targets[name].Addr, round: pr.Round, size: pr.Size, at: now}
				dst := targets[name].Addr
				f := familyOf(dst)
				conn := conns[f]
				if conn == nil {
					continue
				}
				if err := sendPMTU(conn, f, id, seq, dst, pr.Size); err != nil {
					p.log.Debug("path MTU probe not sent", "peer", name, "size", pr.Size, "err", err)
				}
			}
		}
		for k, s := range sent {
			if now.Sub(s.at) > 2*p.cfg.Timeout {
				delete(sent, k)
			}
		}
		p.publish(searches)
	}
}

// publish makes the searches' results visible and tells when they changed.
func (p *pmtuProber) publish(searches map[string]*pmtuSearch) {
	res := make(map[string]int, len(searches))
	for name, s := range searches {
		if m := s.MTU(); m > 0 {
			res[name] = m
		}
	}
	p.mu.Lock()
	changed := !maps.Equal(p.results, res)
	old := p.results
	p.results = res
	p.mu.Unlock()
	if !changed {
		return
	}
	for name, m := range res {
		if old[name] != m {
			p.log.Info("path MTU to peer", "peer", name, "pmtu", m, "was", old[name])
		}
	}
	if p.onChange != nil {
		p.onChange()
	}
}

// pmtuFamily is what differs between the IPv4 and the IPv6 probes.
type pmtuFamily struct {
	network     string // of the raw socket
	laddr       string // its local address
	proto       int    // ICMP's IP protocol number, to parse replies
	ipHeader    int    // the IP header, which the socket strips from what it reads
	echo, reply icmp.Type
	level, opt  int // the socket option that sets Don't Fragment and ignores the kernel's path MTU
	probe       int
}

var (
	pmtuIPv4 = pmtuFamily{"ip4:icmp", "0.0.0.0", 1, 20, ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply,
		unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE}
	pmtuIPv6 = pmtuFamily{"ip6:ipv6-icmp", "::", 58, 40, ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply,
		unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE}
)

func familyOf(a netip.Addr) pmtuFamily {
	if a.Is4() {
		return pmtuIPv4
	}
	return pmtuIPv6
}

// listenPMTU opens the raw ICMP socket of the probes of family f.
func listenPMTU(f pmtuFamily) (*net.IPConn, error) {
	c, err := net.ListenPacket(f.network, f.laddr)
	if err != nil {
		return nil, fmt.Errorf("open the %s socket of path MTU discovery (needs CAP_NET_RAW): %w", f.network, err)
	}
	conn := c.(*net.IPConn)
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), f.level, f.opt, f.probe)
	}); err != nil {
		serr = err
	}
	if serr != nil {
		conn.Close()
		return nil, fmt.Errorf("set Don't Fragment on the path MTU probes: %w", serr)
	}
	return conn, nil
}

// sendPMTU sends an echo request whose IP packet is size bytes long. (The
// kernel computes the ICMPv6 checksum.)
func sendPMTU(conn *net.IPConn, f pmtuFamily, id, seq int, dst netip.Addr, size int) error {
	const icmpHeader = 8
	msg, err := (&icmp.Message{Type: f.echo, Body: &icmp.Echo{ID: id, Seq: seq, Data: make([]byte, size-f.ipHeader-icmpHeader)}}).Marshal(nil)
	if err != nil {
		return err
	}
	_, err = conn.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()})
	return err
}

// readPMTU reads echo replies of identifier id until conn is closed.
func readPMTU(conn *net.IPConn, f pmtuFamily, id int, out chan<- pmtuEcho) {
	buf := make([]byte, 65536)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m, err := icmp.ParseMessage(f.proto, buf[:n])
		if err != nil || m.Type != f.reply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.ID != id {
			continue
		}
		ip, ok := from.(*net.IPAddr)
		if !ok {
			continue
		}
		addr, _ := netip.AddrFromSlice(ip.IP)
		select {
		case out <- pmtuEcho{from: addr.Unmap(), seq: e.Seq, size: n + f.ipHeader}:
		default: // the loop is busy; a lost echo is a lost probe
		}
	}
}

// syncPathMTU tells the prober which peers to measure (by their tunnel
// addresses, over the path WireGuard uses now) and clamps the TCP MSS to
// the peers whose path is smaller than the tunnel.
func (a *agent) syncPathMTU(v meshView, devPeers []wgtypes.Peer) error {
	endpoints := make(map[wgtypes.Key]string, len(devPeers))
	for _, p := range devPeers {
		if p.Endpoint != nil {
			endpoints[p.PublicKey] = p.Endpoint.String()
		}
	}
	targets := map[string]pmtuTarget{}
	for _, p := range v.Peers {
		if p.TunnelAddr.IsValid() {
			targets[p.Name] = pmtuTarget{Addr: p.TunnelAddr, Path: endpoints[p.PublicKey] + " via " + p.RelayVia}
		}
	}
	a.pmtu.SetTargets(targets)
	var rules []clampRule
	if a.cfg.MSSClamp {
		rules = clampRules(v.Peers, a.pmtu.Results(), a.mtu)
	}
	return syncMSSClamp(rules)
}
