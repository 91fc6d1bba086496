package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestMSSClampInNetns: with the clamp rules for a peer's IPv4 and IPv6
// ranges in place, a TCP connection to an address of either negotiates an
// MSS no larger than the clamp, on loopback whose MTU is 64 KiB; a second
// sync changes nothing, and an empty rule set lifts the clamp.
func TestMSSClampInNetns(t *testing.T) {
	inThrowawayNetns(t, func(n ns.NetNS, h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(lo); err != nil {
			return err
		}
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 44, 0, 1).To4(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return err
		}
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("fd10:44::1"), Mask: net.CIDRMask(128, 128)}}); err != nil {
			return err
		}
		peers := []peer{{Name: "node3", TunnelAddr: netip.MustParseAddr("10.44.0.0"), Ranges: pfx("10.44.0.0/14", "fd10:44::/64")}}
		rules := clampRules(peers, map[string]int{"node3": 1216}, 1420)
		if err := syncMSSClamp(rules); err != nil {
			return err
		}
		if err := syncMSSClamp(rules); err != nil {
			return fmt.Errorf("second sync: %w", err)
		}
		if mss, err := negotiatedMSS("10.44.0.1:7777"); err != nil {
			return err
		} else if mss > 1216-ipTCPHeaders {
			t.Errorf("MSS %d across the clamp, want at most %d", mss, 1216-ipTCPHeaders)
		}
		if mss, err := negotiatedMSS("[fd10:44::1]:7777"); err != nil {
			return err
		} else if mss > 1216-ip6TCPHeaders {
			t.Errorf("IPv6: MSS %d across the clamp, want at most %d", mss, 1216-ip6TCPHeaders)
		}
		if err := syncMSSClamp(nil); err != nil {
			return err
		}
		for _, addr := range []string{"10.44.0.1:7778", "[fd10:44::1]:7778"} {
			if mss, err := negotiatedMSS(addr); err != nil {
				return err
			} else if mss <= 1216 {
				t.Errorf("%s: MSS %d on loopback after the clamp was lifted, want the loopback's", addr, mss)
			}
		}
		return nil
	})
}

// negotiatedMSS connects to addr (a listener there is made) and returns
// the MSS the client's connection settled on.
func negotiatedMSS(addr string) (int, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var mss int
	var serr error
	if err := rc.Control(func(fd uintptr) { mss, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) }); err != nil {
		return 0, err
	}
	return mss, serr
}
