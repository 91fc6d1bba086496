package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// EchoReply is the answer to one ICMP echo.
type EchoReply struct {
	From netip.Addr
	RTT  time.Duration
	TTL  int // TTL of the reply as received: 64 minus the hops on the way back
}

// ErrUnreachable is returned when an ICMP destination unreachable comes
// back instead of an echo reply.
var ErrUnreachable = errors.New("destination unreachable")

// Ping sends one ICMP echo from inside the network namespace at netnsPath
// to dst and waits up to timeout (or ctx) for the reply; it returns the
// round trip time. IPv4 only.
func Ping(ctx context.Context, netnsPath string, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	r, err := Echo(ctx, netnsPath, dst, timeout)
	return r.RTT, err
}

// Echo is Ping that also returns the TTL and source of the reply.
func Echo(ctx context.Context, netnsPath string, dst netip.Addr, timeout time.Duration) (EchoReply, error) {
	return echo(ctx, netnsPath, dst, timeout, 0)
}

// PingSize is Ping with an echo request whose IP packet is size bytes
// long (28 at least) and has Don't Fragment set, so it gets through only
// where every hop carries size bytes: what a test of a path MTU needs. The
// local route's MTU is ignored (IP_PMTUDISC_PROBE); only the interface's
// MTU limits what leaves.
func PingSize(ctx context.Context, netnsPath string, dst netip.Addr, size int, timeout time.Duration) (time.Duration, error) {
	if size < 28 || size > 65535 {
		return 0, fmt.Errorf("ping %s: size %d, want 28..65535", dst, size)
	}
	r, err := echo(ctx, netnsPath, dst, timeout, size)
	return r.RTT, err
}

// echo sends one echo request of size bytes with DF set (0: 60 bytes, DF
// as the kernel likes) and waits for its reply.
func echo(ctx context.Context, netnsPath string, dst netip.Addr, timeout time.Duration, size int) (EchoReply, error) {
	dst = dst.Unmap()
	if !dst.Is4() {
		return EchoReply{}, fmt.Errorf("ping %s: only IPv4 is supported", dst)
	}
	var conn *net.IPConn
	err := inNetns(netnsPath, func() error {
		c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		if err == nil {
			conn = c.(*net.IPConn)
		}
		return err
	})
	if err != nil {
		return EchoReply{}, fmt.Errorf("ping %s: open ICMP socket in %s: %w", dst, netnsPath, err)
	}
	defer conn.Close()
	pc := ipv4.NewPacketConn(conn)
	if size > 0 {
		if err := setPMTUProbe(conn); err != nil {
			return EchoReply{}, fmt.Errorf("ping %s: %w", dst, err)
		}
	}
	if err := pc.SetControlMessage(ipv4.FlagTTL, true); err != nil {
		return EchoReply{}, fmt.Errorf("ping %s: %w", dst, err)
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()

	var idb [2]byte
	rand.Read(idb[:])
	id := int(binary.BigEndian.Uint16(idb[:]))
	payload := make([]byte, 32)
	if size > 0 {
		payload = make([]byte, size-28)
	}
	rand.Read(payload)
	req, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: payload}}).Marshal(nil)
	if err != nil {
		return EchoReply{}, err
	}
	sent := time.Now()
	if _, err := conn.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return EchoReply{}, fmt.Errorf("ping %s: send: %w", dst, err)
	}
	buf := make([]byte, max(1500, size))
	for {
		n, cm, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return EchoReply{}, fmt.Errorf("ping %s: %w", dst, ctx.Err())
			}
			return EchoReply{}, fmt.Errorf("ping %s: no reply within %v", dst, deadline.Sub(sent).Round(time.Millisecond))
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil {
			continue
		}
		switch body := m.Body.(type) {
		case *icmp.Echo:
			if m.Type != ipv4.ICMPTypeEchoReply || body.ID != id || body.Seq != 1 || !bytes.Equal(body.Data, payload) {
				continue
			}
			r := EchoReply{RTT: time.Since(sent)}
			if ip, ok := from.(*net.IPAddr); ok {
				r.From, _ = netip.AddrFromSlice(ip.IP)
				r.From = r.From.Unmap()
			}
			if cm != nil {
				r.TTL = cm.TTL
			}
			return r, nil
		case *icmp.DstUnreach:
			if echoID(body.Data) == id {
				return EchoReply{}, fmt.Errorf("ping %s: %w (from %v)", dst, ErrUnreachable, from)
			}
		}
	}
}

// echoID returns the echo identifier in the original datagram quoted by an
// ICMP error (IPv4 header + ICMP header), or -1.
func echoID(quoted []byte) int {
	if len(quoted) < 20 {
		return -1
	}
	ihl := int(quoted[0]&0x0f) * 4
	if len(quoted) < ihl+8 || quoted[9] != 1 || quoted[ihl] != 8 {
		return -1
	}
	return int(binary.BigEndian.Uint16(quoted[ihl+4:]))
}

// Listen opens a listener (as net.Listen) inside the network namespace at
// netnsPath; it stays in that namespace.
func Listen(netnsPath, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := inNetns(netnsPath, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, netnsPath, err)
	}
	return ln, nil
}

// ListenPacket opens a packet socket (as net.ListenPacket) inside the
// network namespace at netnsPath.
func ListenPacket(netnsPath, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inNetns(netnsPath, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, netnsPath, err)
	}
	return pc, nil
}

// Dial connects (as net.Dialer.DialContext) from inside the network
// namespace at netnsPath. The socket is made in that namespace and used
// from any goroutine.
func Dial(ctx context.Context, netnsPath, network, addr string) (net.Conn, error) {
	return DialFrom(ctx, netnsPath, network, nil, addr)
}

// DialFrom is Dial from the local address local (nil: any).
func DialFrom(ctx context.Context, netnsPath, network string, local net.Addr, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(netnsPath, func() error {
		var err error
		c, err = (&net.Dialer{LocalAddr: local}).DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", network, addr, netnsPath, err)
	}
	return c, nil
}

// setPMTUProbe makes the socket set DF on what it sends and ignore the
// path MTU the kernel learnt (IP_PMTUDISC_PROBE).
func setPMTUProbe(conn *net.IPConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set IP_MTU_DISCOVER: %w", serr)
	}
	return nil
}
