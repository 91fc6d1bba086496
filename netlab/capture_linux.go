package netlab

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Capture records every frame that crosses the underlay's bridges. It
// listens on all bridge ports in the underlay namespace and keeps each frame
// once, as it enters the bridge: a frame between two nodes of a site is
// seen once, a frame routed between sites twice (into the router, and out
// of it, after NAT if any).
type Capture struct {
	lab  *Lab
	file *os.File
	done chan struct{}
	stop func() bool

	mu      sync.Mutex
	packets []Packet
	ifaces  map[int]string // ifindex → name; "" for bridges (skipped)
}

// Capture starts recording frames on the underlay until Stop or the end of
// ctx.
func (l *Lab) Capture(ctx context.Context) (*Capture, error) {
	var fd int
	err := inNetns(l.Underlay, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("capture: open packet socket in the underlay: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	c := &Capture{
		lab:    l,
		file:   os.NewFile(uintptr(fd), "capture"),
		done:   make(chan struct{}),
		ifaces: map[int]string{},
	}
	rc, err := c.file.SyscallConn()
	if err != nil {
		c.file.Close()
		return nil, fmt.Errorf("capture: %w", err)
	}
	// Ending (ctx or Stop) sets a read deadline: the reader drains what the
	// socket holds already, then sees the deadline and ends.
	c.stop = context.AfterFunc(ctx, func() { c.file.SetReadDeadline(time.Now()) })
	go c.run(rc)
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) run(rc syscallConn) {
	defer close(c.done)
	buf := make([]byte, 1<<16+256)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			// The deadline: take what the socket still holds, then end.
			_ = rc.Control(func(fd uintptr) {
				for {
					n, from, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
					if err != nil {
						return
					}
					c.record(buf[:n], from)
				}
			})
			return
		}
		if rerr == nil {
			c.record(buf[:n], from)
		}
	}
}

type syscallConn interface {
	Read(func(uintptr) bool) error
	Control(func(uintptr)) error
}

// record keeps a frame that entered a bridge through a port.
func (c *Capture) record(frame []byte, from unix.Sockaddr) {
	sll, ok := from.(*unix.SockaddrLinklayer)
	if !ok || sll.Pkttype == unix.PACKET_OUTGOING {
		return
	}
	name := c.iface(sll.Ifindex)
	if name == "" {
		return // the bridge device itself
	}
	p := ParseFrame(append([]byte(nil), frame...))
	p.Time = time.Now()
	p.Iface = name
	c.mu.Lock()
	c.packets = append(c.packets, p)
	c.mu.Unlock()
}

// iface names the port with index i, "" for a bridge or an unknown link.
func (c *Capture) iface(i int) string {
	c.mu.Lock()
	name, ok := c.ifaces[i]
	c.mu.Unlock()
	if ok {
		return name
	}
	_ = withHandle(c.lab.Underlay, func(h *netlink.Handle) error {
		link, err := h.LinkByIndex(i)
		if err != nil {
			return err
		}
		if link.Type() != "bridge" {
			name = link.Attrs().Name
		}
		return nil
	})
	c.mu.Lock()
	c.ifaces[i] = name
	c.mu.Unlock()
	return name
}

// Packets returns what was recorded so far; recording goes on.
func (c *Capture) Packets() []Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Packet(nil), c.packets...)
}

// Stop ends the capture and returns every frame recorded, including those
// still queued in the socket. It may be called more than once.
func (c *Capture) Stop() []Packet {
	c.stop()
	c.file.SetReadDeadline(time.Now())
	<-c.done
	c.file.Close()
	return c.Packets()
}

// WritePcap stops the capture and writes what it recorded to path.
func (c *Capture) WritePcap(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write capture: %w", err)
	}
	if err := WritePcap(f, c.Stop()); err != nil {
		f.Close()
		return fmt.Errorf("write capture %s: %w", path, err)
	}
	return f.Close()
}
