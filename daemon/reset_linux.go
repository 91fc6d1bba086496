package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/cniplugin"
	"github.com/weftnet/weft/crypto"
)

// ResetConfig says what `weft reset` removes.
type ResetConfig struct {
	Iface      string
	StateDir   string
	RunDir     string
	CNIBinDir  string
	CNIConfDir string
	Log        *slog.Logger
}

// Reset tears down everything weft set up on this node: the tunnel device,
// weft's routes, its nftables table, the host ends of pod veths, the CNI
// plugin and its config, and the state and run directories. It refuses
// while a daemon answers on the socket. Running it twice is harmless.
func Reset(cfg ResetConfig) error {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	sock := filepath.Join(cfg.RunDir, SocketName)
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("a weft daemon answers on %s: stop it first (delete the DaemonSet, or stop the service)", sock)
	}
	var errs []error
	step := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			return
		}
		cfg.Log.Info("removed", "what", what)
	}
	step("tunnel device "+cfg.Iface, crypto.DestroyTunnel(cfg.Iface))
	if h, err := netlink.NewHandle(); err != nil {
		step("routes", err)
	} else {
		step("weft routes", syncRoutes(h, 0, nil))
		step("pod veths", removePodLinks(h))
		h.Close()
	}
	step("nftables table "+nftTable, removeNftables())
	for _, f := range []string{
		filepath.Join(cfg.CNIConfDir, cniplugin.ConflistName),
		filepath.Join(cfg.CNIBinDir, cniplugin.BinaryName),
	} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			step(f, err)
		} else {
			step(f, nil)
		}
	}
	for _, d := range []string{cfg.StateDir, cfg.RunDir} {
		step(d, os.RemoveAll(d))
	}
	return errors.Join(errs...)
}

func removePodLinks(h *netlink.Handle) error {
	links, err := h.LinkList()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range links {
		if cniplugin.IsHostVethName(l.Attrs().Name) {
			if err := h.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
			}
		}
	}
	return errors.Join(errs...)
}
