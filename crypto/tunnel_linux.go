package crypto

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// uapiSocketDir is where wireguard-go's ipc package puts UAPI sockets and
// where wgctrl and wg(8) look for them.
const uapiSocketDir = "/var/run/wireguard"

// OpenTunnel brings up the WireGuard interface cfg.Name, sets its private
// key, listen port and MTU, and sets it up.
//
// An existing interface of that name is reattached, not replaced: a kernel
// WireGuard link is reused as it is (peers included), a persistent userspace
// TUN left by an earlier daemon is taken over by a new wireguard-go device.
// With ModeAuto the existing device's mode is used; asking for the other mode
// explicitly is an error rather than a silent teardown of the data path.
//
// Without an existing interface, ModeAuto creates a kernel WireGuard link and falls back to
// userspace when the kernel lacks WireGuard. Userspace mode runs wireguard-go
// in this process on a persistent TUN with TCP/UDP segmentation offloads
// (IFF_VNET_HDR), and serves its UAPI socket /var/run/wireguard/NAME.sock.
//
// UDP sockets are opened in the network namespace of the calling thread (and,
// for later rebinds, of the process): run the daemon inside its namespace.
func OpenTunnel(cfg TunnelConfig) (_ *Tunnel, err error) {
	cfg.setDefaults()
	if h := cfg.Handover; h != nil {
		defer func() {
			if err != nil {
				h.TUN.Close() // a no-op when the device closed it already
			}
		}()
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	existing, err := netlink.LinkByName(cfg.Name)
	if err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, fmt.Errorf("look up interface %s: %w", cfg.Name, err)
	}
	if existing != nil {
		return reopenTunnel(cfg, existing)
	}
	switch cfg.Mode {
	case ModeKernel:
		return openKernel(cfg, false)
	case ModeUserspace:
		return openUserspace(cfg, false)
	}
	t, err := openKernel(cfg, false)
	if errors.Is(err, ErrNoKernelWireGuard) {
		cfg.Logger.Info("WireGuard is not in this kernel; running userspace wireguard-go", "iface", cfg.Name)
		return openUserspace(cfg, false)
	}
	return t, err
}

func (cfg *TunnelConfig) validate() error {
	switch cfg.Mode {
	case ModeAuto, ModeKernel, ModeUserspace:
	default:
		return fmt.Errorf("unknown WireGuard mode %q; use %s, %s or %s", cfg.Mode, ModeAuto, ModeKernel, ModeUserspace)
	}
	if len(cfg.Name) >= unix.IFNAMSIZ {
		return fmt.Errorf("interface name %q is longer than %d bytes", cfg.Name, unix.IFNAMSIZ-1)
	}
	if cfg.PrivateKey == (wgtypes.Key{}) {
		return errors.New("open tunnel: no private key")
	}
	return nil
}

// reopenTunnel reattaches to an interface left by an earlier run.
func reopenTunnel(cfg TunnelConfig, link netlink.Link) (*Tunnel, error) {
	var mode string
	switch link.Type() {
	case "wireguard":
		mode = ModeKernel
	case "tuntap":
		if tt, ok := link.(*netlink.Tuntap); ok && tt.Mode == netlink.TUNTAP_MODE_TAP {
			return nil, fmt.Errorf("interface %s exists and is a TAP device, not a WireGuard tunnel; remove it or choose another --iface", cfg.Name)
		}
		mode = ModeUserspace
	default:
		return nil, fmt.Errorf("interface %s exists and is a %s link, not a WireGuard tunnel; remove it or choose another --iface", cfg.Name, link.Type())
	}
	if cfg.Mode != ModeAuto && cfg.Mode != mode {
		return nil, fmt.Errorf("interface %s exists as a %s WireGuard device but the mode asked for is %s; use --wg-mode %s, or `weft reset` to remove it (this cuts pod traffic)", cfg.Name, mode, cfg.Mode, mode)
	}
	cfg.Logger.Info("reattaching to the existing tunnel device", "iface", cfg.Name, "mode", mode)
	if mode == ModeKernel {
		return openKernel(cfg, true)
	}
	return openUserspace(cfg, true)
}

// openKernel creates (or, when existed, reuses) a kernel WireGuard link.
func openKernel(cfg TunnelConfig, existed bool) (t *Tunnel, err error) {
	if !existed {
		wg := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: cfg.Name, MTU: cfg.MTU}}
		if err := netlink.LinkAdd(wg); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				return nil, fmt.Errorf("create interface %s: %w (%v); load the wireguard kernel module or use --wg-mode userspace", cfg.Name, ErrNoKernelWireGuard, err)
			}
			return nil, fmt.Errorf("create WireGuard interface %s: %w", cfg.Name, err)
		}
		defer func() {
			if err != nil {
				netlink.LinkDel(wg)
			}
		}()
	}
	client, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	t = &Tunnel{name: cfg.Name, mode: ModeKernel, client: client}
	if err := t.setUp(cfg); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// openUserspace runs wireguard-go on a persistent TUN, created or (when
// existed) reattached.
func openUserspace(cfg TunnelConfig, existed bool) (_ *Tunnel, err error) {
	// TUNSETIFF on the name of an existing TUN attaches to it, and sets the
	// flags CreateTUN asks for (IFF_VNET_HDR included) anew, so offloads are
	// the same for a created and for a reattached device.
	tunDev, err := openTUN(cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && !existed {
			if link, lerr := netlink.LinkByName(cfg.Name); lerr == nil {
				netlink.LinkDel(link)
			}
		}
	}()
	if err := setPersist(tunDev); err != nil {
		tunDev.Close()
		return nil, fmt.Errorf("make TUN %s persistent: %w", cfg.Name, err)
	}
	// With IFF_VNET_HDR and TSO accepted, wireguard-go reads and writes
	// batches of segments (GSO/GRO); without, one packet at a time.
	offloads := tunDev.BatchSize() > 1
	if !offloads {
		cfg.Logger.Warn("TUN segmentation offloads are not available; userspace WireGuard will be slower", "iface", cfg.Name)
	}

	u := &Tunnel{name: cfg.Name, mode: ModeUserspace, tunFile: tunDev.(interface{ File() *os.File }).File()}
	dataTUN, bind := tunDev, conn.NewDefaultBind()
	if offloads && !cfg.WireGuardGoIO {
		dataTUN, bind = newBatchTUN(tunDev), newBatchBind(cfg.Logger)
	}
	u.dev = device.NewDevice(dataTUN, bind, deviceLogger(cfg.Logger))
	defer func() {
		if err != nil {
			u.Close()
		}
	}()
	uapiFile, err := ipc.UAPIOpen(cfg.Name)
	if err != nil {
		// The socket directory is shared by every network namespace that
		// shares this file system, unlike interface names.
		return nil, fmt.Errorf("open UAPI socket %s: %w; if another wireguard-go serves it (a weft daemon with the same --iface in another network namespace), give each daemon its own --iface or its own mount namespace for %s", uapiSocketPath(cfg.Name), err, uapiSocketDir)
	}
	u.uapi, err = ipc.UAPIListen(cfg.Name, uapiFile)
	uapiFile.Close() // UAPIListen holds its own descriptor
	if err != nil {
		return nil, fmt.Errorf("listen on UAPI socket %s: %w", uapiSocketPath(cfg.Name), err)
	}
	u.serving.Add(1)
	go u.serveUAPI()

	if u.client, err = wgctrl.New(); err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	if err := u.setUp(cfg); err != nil {
		return nil, err
	}
	if h := cfg.Handover; h != nil && h.Peers != "" {
		// Peers before Up: Up sends every peer with a keepalive a
		// handshake at once, so new sessions are one round trip away.
		if err := u.dev.IpcSet(h.Peers); err != nil {
			return nil, fmt.Errorf("restore the peers handed over on %s: %w", cfg.Name, err)
		}
		// Milliseconds at most, and only right after a handshake.
		time.Sleep(time.Until(h.LastHandshake.Add(handshakeGap)))
	}
	if err := u.dev.Up(); err != nil {
		return nil, fmt.Errorf("start WireGuard on %s: %w", cfg.Name, err)
	}
	cfg.Logger.Info("userspace WireGuard running", "iface", cfg.Name, "offloads", offloads, "io", map[bool]string{true: "weft", false: "wireguard-go"}[dataTUN != tunDev], "reattached", existed, "handed-over", cfg.Handover != nil)
	return u, nil
}

// openTUN attaches to the TUN cfg.Name: the handed-over file when there is
// one, else by name (creating the device if needed).
func openTUN(cfg TunnelConfig) (tun.Device, error) {
	if h := cfg.Handover; h != nil {
		if h.Name != cfg.Name {
			return nil, fmt.Errorf("the TUN handed over is %s, not %s; give the new daemon the same --iface", h.Name, cfg.Name)
		}
		dev, err := tun.CreateTUNFromFile(h.TUN, cfg.MTU)
		if err != nil {
			return nil, fmt.Errorf("run on the TUN %s handed over: %w", cfg.Name, err)
		}
		return dev, nil
	}
	dev, err := tun.CreateTUN(cfg.Name, cfg.MTU)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("create TUN %s: %w (%v); is another weft daemon or wireguard-go running?", cfg.Name, ErrTUNBusy, err)
	}
	if err != nil {
		return nil, fmt.Errorf("create TUN %s: %w", cfg.Name, err)
	}
	return dev, nil
}

// setUp sets the key, port and MTU and brings the link up; both modes.
func (t *Tunnel) setUp(cfg TunnelConfig) error {
	wcfg := wgtypes.Config{PrivateKey: &cfg.PrivateKey}
	if cfg.ListenPort != 0 {
		wcfg.ListenPort = &cfg.ListenPort
	}
	if err := t.Configure(wcfg); err != nil {
		return fmt.Errorf("set private key and listen port %d on %s: %w", cfg.ListenPort, t.name, err)
	}
	link, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("look up interface %s: %w", t.name, err)
	}
	if link.Attrs().MTU != cfg.MTU {
		if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("set MTU %d on %s: %w", cfg.MTU, t.name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", t.name, err)
	}
	t.index = link.Attrs().Index
	return nil
}

// setPersist sets TUNSETPERSIST on the TUN, so that the interface, its
// addresses and routes survive the process.
func setPersist(dev tun.Device) error {
	f, ok := dev.(interface{ File() *os.File })
	if !ok {
		return fmt.Errorf("TUN device %T has no file", dev)
	}
	sc, err := f.File().SyscallConn()
	if err != nil {
		return err
	}
	var ioctlErr error
	if err := sc.Control(func(fd uintptr) {
		ioctlErr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, 1)
	}); err != nil {
		return err
	}
	return ioctlErr
}

func uapiSocketPath(name string) string {
	return filepath.Join(uapiSocketDir, name+".sock")
}

// DestroyTunnel removes the tunnel interface name, kernel or userspace, and a
// stale UAPI socket of that name; `weft reset` uses it. It is not an error if
// the interface does not exist. A daemon still running on the interface
// loses it.
func DestroyTunnel(name string) error {
	link, err := netlink.LinkByName(name)
	switch {
	case errors.As(err, new(netlink.LinkNotFoundError)):
	case err != nil:
		return fmt.Errorf("look up interface %s: %w", name, err)
	default:
		if t := link.Type(); t != "wireguard" && t != "tuntap" {
			return fmt.Errorf("interface %s is a %s link, not a weft tunnel; not removing it", name, t)
		}
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("delete interface %s: %w", name, err)
		}
	}
	sock := uapiSocketPath(name)
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close() // a live wireguard-go (in another namespace) owns it
		return nil
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale UAPI socket: %w", err)
	}
	return nil
}
