package crypto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Tunnel modes, the values of TunnelConfig.Mode and of Tunnel.Mode.
const (
	// ModeAuto uses kernel WireGuard when the kernel has it, else userspace.
	ModeAuto = "auto"
	// ModeKernel uses kernel WireGuard and fails when the kernel lacks it.
	ModeKernel = "kernel"
	// ModeUserspace uses embedded wireguard-go on a TUN device.
	ModeUserspace = "userspace"
)

// Defaults of TunnelConfig.
const (
	DefaultTunnelName = "weft"
	// DefaultMTU is AutoMTU of a 1500-byte underlay.
	DefaultMTU = 1420
)

// tunnelOverhead is what WireGuard adds to a packet in the worst case: outer
// IPv6 header (40), UDP (8), WireGuard data header (16) and tag (16).
const tunnelOverhead = 80

// ErrNoKernelWireGuard is returned (wrapped) by OpenTunnel in kernel mode
// when the kernel has no WireGuard.
var ErrNoKernelWireGuard = errors.New("WireGuard is not in this kernel")

// ErrTUNBusy is returned (wrapped) by OpenTunnel in userspace mode when
// another process holds the TUN device, such as a daemon still stopping.
var ErrTUNBusy = errors.New("the TUN device is busy: another process holds it")

// ErrNotUserspace is returned by Tunnel.Detach for a kernel device, which
// needs no handover: it lives in the kernel, peers and sessions included.
var ErrNotUserspace = errors.New("the tunnel is kernel WireGuard; nothing to hand over")

// AutoMTU returns the tunnel MTU for an underlay link MTU: room for WireGuard
// over IPv6, the worst case.
func AutoMTU(underlayMTU int) int {
	return underlayMTU - tunnelOverhead
}

// WGClient is the part of wgctrl the tunnel needs: configure and read a
// WireGuard device by name, for kernel and userspace devices alike. The real
// one is *wgctrl.Client (NewWGClient); tests of consumers fake it. Safe for
// concurrent use as wgctrl.Client is.
type WGClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
	io.Closer
}

var _ WGClient = (*wgctrl.Client)(nil)

// NewWGClient returns the real WGClient, a *wgctrl.Client, which talks netlink
// to kernel devices and the UAPI socket to userspace ones.
func NewWGClient() (WGClient, error) {
	return wgctrl.New()
}

// TunnelConfig configures OpenTunnel.
type TunnelConfig struct {
	// Name of the network interface. Default "weft". At most 15 bytes.
	Name string
	// Mode is ModeAuto (the default), ModeKernel or ModeUserspace.
	Mode string
	// PrivateKey of this node; set on the device at open. Required.
	PrivateKey wgtypes.Key
	// ListenPort is the UDP port WireGuard listens on; 0 lets the system
	// pick one (the daemon passes --wg-port).
	ListenPort int
	// MTU of the interface. Default DefaultMTU; see AutoMTU.
	MTU int
	// Logger receives the tunnel's own logs and, in userspace mode, those of
	// wireguard-go (its verbose lines at Debug). Default slog.Default().
	Logger *slog.Logger
	// WireGuardGoIO makes a userspace tunnel read and write its TUN and UDP
	// sockets with wireguard-go's own code rather than weft's batchTUN and
	// batchBind (tunbatch_linux.go, bind_linux.go): a way back should a
	// kernel misbehave with them, and the baseline of the data-path
	// benchmark.
	WireGuardGoIO bool
	// Handover, when set, is a live userspace tunnel another process passed
	// to this one (Tunnel.Detach there): the device runs on its TUN file and
	// starts with its peers, instead of reattaching by name. OpenTunnel owns
	// the file from then on, on success and on failure.
	Handover *Handover
}

// Handover is a userspace tunnel in transit from one process to the next
// (see Tunnel.Detach): the TUN file, open all along so that the kernel
// queues the pods' packets instead of dropping them, and the device's peers.
type Handover struct {
	// Name of the interface the TUN file is attached to.
	Name string
	// TUN is the open TUN queue.
	TUN *os.File
	// Peers is the device's peers in wireguard-go's UAPI "set" syntax
	// (public_key=, preshared_key=, endpoint=, persistent_keepalive_interval=,
	// allowed_ip=); no private key, no counters.
	Peers string
	// LastHandshake is the latest handshake of any peer. The new device
	// starts its own handshakes no sooner than handshakeGap after it, or
	// the peer would take them for a flood and drop them.
	LastHandshake time.Time
}

func (cfg *TunnelConfig) setDefaults() {
	if cfg.Name == "" {
		cfg.Name = DefaultTunnelName
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeAuto
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
}

// Tunnel is an open WireGuard device. Configure, Device and Client may be
// called from any goroutine; after Close (which may be called more than once)
// they fail.
type Tunnel struct {
	name   string
	mode   string
	index  int
	client WGClient

	// Userspace mode only.
	dev      *device.Device
	tunFile  *os.File // the TUN queue wireguard-go reads; closed by dev.Close
	uapi     net.Listener
	serving  sync.WaitGroup // the UAPI accept loop and its handlers
	connsMu  sync.Mutex     // guards conns and closing
	conns    map[net.Conn]struct{}
	closing  bool
	closeErr error
	closed   sync.Once
}

// Name returns the interface name.
func (t *Tunnel) Name() string { return t.name }

// Mode returns the mode in use, ModeKernel or ModeUserspace (never ModeAuto).
func (t *Tunnel) Mode() string { return t.mode }

// LinkIndex returns the interface index, for routes through the tunnel.
func (t *Tunnel) LinkIndex() int { return t.index }

// Configure applies cfg to the device (see wgtypes.Config: peers are added or
// updated unless ReplacePeers is set).
func (t *Tunnel) Configure(cfg wgtypes.Config) error {
	return t.client.ConfigureDevice(t.name, cfg)
}

// Client returns the WGClient the tunnel uses, for code that takes a WGClient
// and the interface name (and a cryptotest.WGClient in its tests). It belongs
// to the tunnel: Close closes it.
func (t *Tunnel) Client() WGClient { return t.client }

// Device reads the device's configuration and peer state.
func (t *Tunnel) Device() (*wgtypes.Device, error) {
	return t.client.Device(t.name)
}

// Done is closed when a userspace device stops by itself, for example because
// someone deleted its interface; the daemon should then open it again. It is
// nil (never ready) in kernel mode.
func (t *Tunnel) Done() <-chan struct{} {
	if t.dev == nil {
		return nil
	}
	return t.dev.Wait()
}

// serveUAPI answers wgctrl and `wg` on the userspace device's UAPI socket
// until the listener is closed. Each connection is handled by its own
// goroutine, tracked so that Close can end and wait for them.
//
// wireguard-go's listener ends two goroutines of its own with an error
// each (its accept loop, and its watch of the socket file) and holds only
// one of them: Accept must take both, or the other goroutine waits
// forever. So after the first error it serves nothing more, and returns
// at the second, which the listener's Close brings at the latest.
func (t *Tunnel) serveUAPI() {
	defer t.serving.Done()
	for failed := 0; failed < 2; {
		c, err := t.uapi.Accept()
		if err != nil {
			failed++
			continue
		}
		t.connsMu.Lock()
		if t.closing || failed > 0 {
			t.connsMu.Unlock()
			c.Close()
			continue
		}
		if t.conns == nil {
			t.conns = make(map[net.Conn]struct{})
		}
		t.conns[c] = struct{}{}
		t.connsMu.Unlock()
		t.serving.Add(1)
		go func() {
			defer t.serving.Done()
			t.dev.IpcHandle(c) // closes c when done
			t.connsMu.Lock()
			delete(t.conns, c)
			t.connsMu.Unlock()
		}()
	}
}

// Close releases the tunnel but leaves the interface, with its addresses,
// routes and (in kernel mode) peers, in place, so that traffic keeps its path
// and a new OpenTunnel reattaches to it; DestroyTunnel removes it. In
// userspace mode it stops wireguard-go and its UAPI socket: the persistent
// TUN then holds packets until a new OpenTunnel takes it over.
func (t *Tunnel) Close() error {
	t.closed.Do(func() {
		var errs []error
		if t.uapi != nil {
			if err := t.uapi.Close(); err != nil {
				errs = append(errs, err)
			}
			t.connsMu.Lock()
			t.closing = true
			for c := range t.conns {
				c.Close()
			}
			t.connsMu.Unlock()
			t.serving.Wait()
		}
		if t.dev != nil {
			t.dev.Close() // closes the TUN file; the persistent TUN stays
		}
		if t.client != nil {
			if err := t.client.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// deviceLogger adapts slog to wireguard-go's logger: verbose lines at Debug,
// errors (mostly unreachable peers, which a mesh sees routinely) at Warn.
func deviceLogger(l *slog.Logger) *device.Logger {
	l = l.With("component", "wireguard-go")
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			l.Warn(fmt.Sprintf(format, args...))
		},
	}
}
