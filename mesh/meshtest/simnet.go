package meshtest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// SimNetwork is an in-memory network for real meshes (mesh.Config's
// Transport): datagrams and streams between transports in one process,
// without sockets. It is a LAN without delay: a datagram arrives at once or,
// when the receiver's queue is full or it has shut down, is lost, as UDP
// would be; a stream is a net.Pipe. Everything blocks only on channels, so
// a cluster of meshes on it runs inside a testing/synctest bubble, where
// time is virtual: convergence is then measured as if every node had a CPU
// of its own, whatever the load of the machine that runs the simulation.
type SimNetwork struct {
	mu    sync.Mutex
	nodes map[string]*SimTransport // by "ip:port"

	// Lost counts datagrams dropped at full queues.
	Lost atomic.Uint64
}

// simQueue is the datagram queue of each transport; memberlist's own
// handoff queue behind it holds 1024 messages.
const simQueue = 1024

// ErrSimRefused is the error of a dial to an address with no transport.
var ErrSimRefused = errors.New("simulated network: connection refused")

// Transport returns a new transport at addr. It fails if addr is taken.
func (n *SimNetwork) Transport(addr netip.AddrPort) (*SimTransport, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nodes == nil {
		n.nodes = map[string]*SimTransport{}
	}
	key := addr.String()
	if _, ok := n.nodes[key]; ok {
		return nil, fmt.Errorf("simulated network: %s is taken", key)
	}
	t := &SimTransport{
		net:     n,
		addr:    addr,
		packets: make(chan *memberlist.Packet, simQueue),
		streams: make(chan net.Conn, 128),
		done:    make(chan struct{}),
	}
	n.nodes[key] = t
	return t, nil
}

func (n *SimNetwork) lookup(addr string) *SimTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nodes[addr]
}

// SimTransport is one node's end of a SimNetwork; it implements
// memberlist.NodeAwareTransport.
type SimTransport struct {
	net     *SimNetwork
	addr    netip.AddrPort
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
}

var _ memberlist.NodeAwareTransport = (*SimTransport)(nil)

// Addr is the transport's address.
func (t *SimTransport) Addr() netip.AddrPort { return t.addr }

func (t *SimTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return net.IP(t.addr.Addr().AsSlice()), int(t.addr.Port()), nil
}

func (t *SimTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *SimTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	dst := t.net.lookup(a.Addr)
	if dst == nil {
		return now, nil // nobody there: lost, as UDP
	}
	p := &memberlist.Packet{Buf: append([]byte(nil), b...), From: net.UDPAddrFromAddrPort(t.addr), Timestamp: now}
	select {
	case <-dst.done:
	case dst.packets <- p:
	default:
		t.net.Lost.Add(1)
	}
	return now, nil
}

func (t *SimTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *SimTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *SimTransport) DialAddressTimeout(a memberlist.Address, _ time.Duration) (net.Conn, error) {
	dst := t.net.lookup(a.Addr)
	if dst == nil {
		return nil, fmt.Errorf("dial %s: %w", a.Addr, ErrSimRefused)
	}
	local, remote := net.Pipe()
	select {
	case <-dst.done:
		return nil, fmt.Errorf("dial %s: %w", a.Addr, ErrSimRefused)
	case dst.streams <- remote:
		return local, nil
	default:
		return nil, fmt.Errorf("dial %s: backlog full: %w", a.Addr, ErrSimRefused)
	}
}

func (t *SimTransport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown takes the transport off the network; what is sent to it is lost.
func (t *SimTransport) Shutdown() error {
	t.once.Do(func() {
		t.net.mu.Lock()
		delete(t.net.nodes, t.addr.String())
		t.net.mu.Unlock()
		close(t.done)
	})
	return nil
}
