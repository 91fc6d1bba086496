package daemon

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// TestLooseRPFilterInNetns shows, in a throwaway node namespace whose
// conf.all.rp_filter is 1 (strict), that setLooseRPFilter lets a packet in
// on weft's interface whose source this node routes through another
// interface (a peer's range before its route is here), that strict
// conf.all would drop it had weft set 0 there, and that the host-wide
// value stays as the operator set it.
//
//	peer ns: p0 192.168.50.2/24 + 10.99.0.5/32 ──veth── node ns: weft 192.168.50.1/24
//	                                                     uplink: 10.99.0.0/24 routed here
func TestLooseRPFilterInNetns(t *testing.T) {
	node, peer := throwawayNetns(t), throwawayNetns(t)
	var listener *net.UDPConn
	err := node.Do(func(ns.NetNS) error {
		for _, kv := range [][2]string{{"all", "1"}, {"default", "1"}} {
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+kv[0]+"/rp_filter", []byte(kv[1]), 0o644); err != nil {
				return err
			}
		}
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		// No dummy driver on every kernel: veths stand in for the tunnel
		// device and the uplink.
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "weft"}, PeerName: "p0"}); err != nil {
			return err
		}
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink"}, PeerName: "uplinkpeer"}); err != nil {
			return err
		}
		p0, _ := h.LinkByName("p0")
		if err := h.LinkSetNsFd(p0, int(peer.Fd())); err != nil {
			return err
		}
		for _, name := range []string{"lo", "weft", "uplink", "uplinkpeer"} {
			l, err := h.LinkByName(name)
			if err != nil {
				return err
			}
			if err := h.LinkSetUp(l); err != nil {
				return err
			}
		}
		weft, _ := h.LinkByName("weft")
		if err := h.AddrAdd(weft, mustAddr("192.168.50.1/24")); err != nil {
			return err
		}
		uplink, _ := h.LinkByName("uplink")
		_, dst, _ := net.ParseCIDR("10.99.0.0/24")
		if err := h.RouteAdd(&netlink.Route{LinkIndex: uplink.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		listener, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(192, 168, 50, 1), Port: 9999})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	var weftMAC net.HardwareAddr
	node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("weft")
		if err == nil {
			weftMAC = l.Attrs().HardwareAddr
		}
		return err
	})
	var sender *net.UDPConn
	err = peer.Do(func(ns.NetNS) error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		p0, err := h.LinkByName("p0")
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(p0); err != nil {
			return err
		}
		for _, a := range []string{"192.168.50.2/24", "10.99.0.5/32"} {
			if err := h.AddrAdd(p0, mustAddr(a)); err != nil {
				return err
			}
		}
		// A fixed neighbour: no ARP, whose own source check is not
		// what this test is about.
		if err := h.NeighAdd(&netlink.Neigh{LinkIndex: p0.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: net.IPv4(192, 168, 50, 1), HardwareAddr: weftMAC}); err != nil {
			return err
		}
		sender, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 99, 0, 5)}, &net.UDPAddr{IP: net.IPv4(192, 168, 50, 1), Port: 9999})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()

	inNode := func(f func() error) {
		t.Helper()
		if err := node.Do(func(ns.NetNS) error { return f() }); err != nil {
			t.Fatal(err)
		}
	}

	// Control: with 0 on weft, strict conf.all rules, and the kernel drops
	// the packet for its source.
	inNode(func() error { return os.WriteFile("/proc/sys/net/ipv4/conf/weft/rp_filter", []byte("0"), 0o644) })
	var before int
	inNode(func() (err error) { before, err = rpFilterDrops(); return err })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := sender.Write([]byte("strict")); err != nil {
			t.Fatal(err)
		}
		var now int
		inNode(func() (err error) { now, err = rpFilterDrops(); return err })
		if now > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("conf.all.rp_filter=1 with 0 on the interface dropped nothing: the control shows nothing")
		}
		listener.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, _, err := listener.ReadFromUDP(make([]byte, 64)); err == nil {
			t.Fatal("a packet passed strict source validation: the setup is not asymmetric")
		}
	}

	// weft's setting: loose on its interface, conf.all untouched.
	inNode(func() error { return setLooseRPFilter("weft", slog.New(slog.NewTextHandler(io.Discard, nil))) })
	inNode(func() error {
		for name, want := range map[string]string{"all": "1", "weft": rpFilterLoose} {
			b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + name + "/rp_filter")
			if err != nil {
				return err
			}
			if got := strings.TrimSpace(string(b)); got != want {
				return fmt.Errorf("net.ipv4.conf.%s.rp_filter = %s, want %s", name, got, want)
			}
		}
		return nil
	})
	deadline = time.Now().Add(10 * time.Second)
	buf := make([]byte, 64)
	for {
		if _, err := sender.Write([]byte("loose")); err != nil {
			t.Fatal(err)
		}
		listener.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, from, err := listener.ReadFromUDP(buf)
		if err == nil && string(buf[:n]) == "loose" {
			if !from.IP.Equal(net.IPv4(10, 99, 0, 5)) {
				t.Errorf("from %v, want 10.99.0.5", from)
			}
			break
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("with rp_filter=2 on weft, the packet from a source routed elsewhere never arrived")
		}
	}
}

func mustAddr(s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

// rpFilterDrops reads the calling thread's namespace's count of packets
// dropped by source validation (TcpExt IPReversePathFilter).
func rpFilterDrops() (int, error) {
	b, err := os.ReadFile("/proc/thread-self/net/netstat")
	if err != nil {
		return 0, err
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) || values[0] != "TcpExt:" {
			continue
		}
		for j, n := range names {
			if n == "IPReversePathFilter" {
				return strconv.Atoi(values[j])
			}
		}
	}
	return 0, errors.New("no TcpExt IPReversePathFilter in /proc/thread-self/net/netstat")
}
