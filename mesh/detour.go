package mesh

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// A detour carries gossip to some members another way than to their
// gossip address on the underlay. weft sends it to members behind NAT
// through the tunnel, to their tunnel address: nodes outside a NAT'd
// node's site cannot reach its gossip address, so their probes of it fail
// and it is suspected over and over, and declared dead whenever a
// refutation comes late. Through the tunnel (punched, or relayed) the
// probes are answered. Config.Detour says which members take it; the
// node's own end listens once ListenDetour gave it an address.
//
// Only gossip to a member goes round: what a NAT'd node sends to members
// that are not behind NAT takes the underlay, which it reaches. Messages
// keep memberlist's label and encryption.

// detourTransport wraps the underlay transport.
type detourTransport struct {
	memberlist.NodeAwareTransport
	route func(name string) (netip.Addr, bool)
	port  int // this node's gossip port, which its detour listeners take too
	log   *slog.Logger

	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	wg      sync.WaitGroup

	received, accepted atomic.Uint64 // packets and streams that came round

	mu    sync.Mutex
	local netip.Addr // the detour listeners' address; invalid: none
	udp   *net.UDPConn
	tcp   *net.TCPListener
}

func newDetourTransport(under memberlist.NodeAwareTransport, route func(string) (netip.Addr, bool), port int, log *slog.Logger) *detourTransport {
	t := &detourTransport{NodeAwareTransport: under, route: route, port: port, log: log,
		packets: make(chan *memberlist.Packet), streams: make(chan net.Conn), done: make(chan struct{})}
	t.wg.Add(2)
	go func() {
		defer t.wg.Done()
		forward(under.PacketCh(), t.packets, t.done)
	}()
	go func() {
		defer t.wg.Done()
		forward(under.StreamCh(), t.streams, t.done)
	}()
	return t
}

// forward passes what arrives on in to out until done is closed.
func forward[T any](in <-chan T, out chan<- T, done <-chan struct{}) {
	for {
		select {
		case v := <-in:
			select {
			case out <- v:
			case <-done:
				return
			}
		case <-done:
			return
		}
	}
}

func (t *detourTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }
func (t *detourTransport) StreamCh() <-chan net.Conn           { return t.streams }

// target is where gossip for the member at addr goes round, if it does:
// the address Detour gives, at the member's gossip port. It runs for every
// message memberlist sends, so the common answer (no detour) comes first
// and cheap.
func (t *detourTransport) target(addr memberlist.Address) (netip.AddrPort, netip.Addr, *net.UDPConn, bool) {
	none := func() (netip.AddrPort, netip.Addr, *net.UDPConn, bool) {
		return netip.AddrPort{}, netip.Addr{}, nil, false
	}
	if addr.Name == "" {
		return none()
	}
	to, ok := t.route(addr.Name)
	if !ok || !to.IsValid() {
		return none()
	}
	t.mu.Lock()
	local, udp := t.local, t.udp
	t.mu.Unlock()
	if udp == nil || to.Is4() != local.Is4() {
		return none()
	}
	gossip, err := netip.ParseAddrPort(addr.Addr)
	if err != nil {
		return none()
	}
	return netip.AddrPortFrom(to, gossip.Port()), local, udp, true
}

func (t *detourTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	if to, _, udp, ok := t.target(addr); ok {
		if _, err := udp.WriteToUDPAddrPort(b, to); err == nil {
			return time.Now(), nil
		}
		// The detour is gone (its address changed): the underlay.
	}
	return t.NodeAwareTransport.WriteToAddress(b, addr)
}

func (t *detourTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if to, local, _, ok := t.target(addr); ok {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: local.AsSlice()}}
		c, err := d.Dial("tcp", to.String())
		if err == nil {
			return c, nil
		}
		t.log.Debug("gossip stream through the detour failed; taking the underlay", "peer", addr.Name, "to", to, "err", err)
	}
	return t.NodeAwareTransport.DialAddressTimeout(addr, timeout)
}

// listen moves the detour listeners to addr (invalid: closes them).
func (t *detourTransport) listen(addr netip.Addr) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if addr == t.local {
		return nil
	}
	t.closeLocked()
	if !addr.IsValid() {
		return nil
	}
	ap := netip.AddrPortFrom(addr, uint16(t.port))
	udp, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return fmt.Errorf("listen for gossip through the tunnel on %s (UDP): %w", ap, err)
	}
	tcp, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		udp.Close()
		return fmt.Errorf("listen for gossip through the tunnel on %s (TCP): %w", ap, err)
	}
	t.local, t.udp, t.tcp = addr, udp, tcp
	t.wg.Add(2)
	go t.readPackets(udp)
	go t.accept(tcp)
	return nil
}

func (t *detourTransport) closeLocked() {
	if t.udp != nil {
		t.udp.Close()
		t.tcp.Close()
	}
	t.local, t.udp, t.tcp = netip.Addr{}, nil, nil
}

func (t *detourTransport) readPackets(c *net.UDPConn) {
	defer t.wg.Done()
	for {
		buf := make([]byte, 65536)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		ts := time.Now()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.log.Debug("gossip through the tunnel: read", "err", err)
			}
			return
		}
		if n < 1 {
			continue
		}
		t.received.Add(1)
		select {
		case t.packets <- &memberlist.Packet{Buf: buf[:n], From: net.UDPAddrFromAddrPort(from), Timestamp: ts}:
		case <-t.done:
			return
		}
	}
}

func (t *detourTransport) accept(l *net.TCPListener) {
	defer t.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.log.Debug("gossip through the tunnel: accept", "err", err)
			}
			return
		}
		t.accepted.Add(1)
		select {
		case t.streams <- c:
		case <-t.done:
			c.Close()
			return
		}
	}
}

func (t *detourTransport) Shutdown() error {
	t.mu.Lock()
	t.closeLocked()
	t.mu.Unlock()
	err := t.NodeAwareTransport.Shutdown()
	close(t.done)
	t.wg.Wait()
	return err
}
