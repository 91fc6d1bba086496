package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// TestPMTUProberBothFamilies: the prober measures an IPv4 and an IPv6
// target over a real path, loopback with its MTU lowered to 1300: ICMP
// and ICMPv6 echoes of up to 1300 bytes pass, larger ones cannot leave, so
// both results land within the search's precision below 1300.
func TestPMTUProberBothFamilies(t *testing.T) {
	inThrowawayNetns(t, func(n ns.NetNS, h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := h.LinkSetMTU(lo, 1300); err != nil {
			return err
		}
		if err := h.LinkSetUp(lo); err != nil {
			return err
		}
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("fd10:44::1"), Mask: net.CIDRMask(128, 128)}, Flags: 0x80 /* IFA_F_NODAD */}); err != nil {
			return err
		}
		cfg := defaultPMTUConfig(1420)
		cfg.Timeout = 200 * time.Millisecond
		p := newPMTUProber(cfg, slog.New(slog.DiscardHandler), nil)
		p.SetTargets(map[string]pmtuTarget{
			"v4": {Addr: netip.MustParseAddr("127.0.0.1")},
			"v6": {Addr: netip.MustParseAddr("fd10:44::1")},
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		// Run opens its sockets on its own goroutine: in the namespace too.
		go n.Do(func(ns.NetNS) error {
			done <- p.Run(ctx)
			return nil
		})
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
		deadline := time.Now().Add(20 * time.Second)
		for {
			res := p.Results()
			ok := true
			for _, name := range []string{"v4", "v6"} {
				if m := res[name]; m < 1300-cfg.Precision || m > 1300 {
					ok = false
				}
			}
			if ok {
				t.Logf("path MTU over loopback with MTU 1300: %v", res)
				return nil
			}
			if time.Now().After(deadline) {
				t.Errorf("path MTU results %v after 20 s, want each in %d..1300", res, 1300-cfg.Precision)
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
