package crypto

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestTunnelKernelModeFailsWithoutKernelWireGuard(t *testing.T) {
	needRoot(t)
	n := newNS(t)
	name := uniqueName(t)
	var tun *Tunnel
	err := n.Do(func(ns.NetNS) error {
		var err error
		tun, err = OpenTunnel(TunnelConfig{Name: name, Mode: ModeKernel, PrivateKey: newKey(t), Logger: discardLogger()})
		return err
	})
	if err == nil {
		tun.Close()
		n.Do(func(ns.NetNS) error { return DestroyTunnel(name) })
		t.Skip("this kernel has WireGuard")
	}
	if !errors.Is(err, ErrNoKernelWireGuard) {
		t.Fatalf("err = %v, want ErrNoKernelWireGuard", err)
	}
	if !strings.Contains(err.Error(), "--wg-mode userspace") {
		t.Errorf("error %q does not say what to do", err)
	}
	if _, err := nlHandle(t, n).LinkByName(name); err == nil {
		t.Error("failed kernel mode left an interface behind")
	}
}

func TestTunnelPingThroughUserspaceTunnels(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("needs ping")
	}
	nsA, nsB := newNS(t), newNS(t)
	underlay(t, nsA, nsB, "192.168.231.1/24", "192.168.231.2/24")
	psk := testSecret().PresharedKey()
	cfgA, cfgB := pairConfigs(t, psk)
	nameA := cfgA.Name
	keyA, keyB := mustParseKey(t, cfgA.PrivateKey), mustParseKey(t, cfgB.PrivateKey)
	const port = 51820

	// A asks for auto and, without kernel WireGuard, gets userspace.
	cfgA.Mode = ModeAuto
	a := startChild(t, nsA, cfgA)
	b := startChild(t, nsB, cfgB)
	for _, c := range []*child{a, b} {
		if c.ready.Err != "" {
			t.Fatalf("open tunnel: %s", c.ready.Err)
		}
	}
	if b.ready.Mode != ModeUserspace {
		t.Errorf("userspace mode gave %q", b.ready.Mode)
	}
	if a.ready.Mode == ModeUserspace && !a.stderr.waitFor("WireGuard is not in this kernel; running userspace wireguard-go", 5*time.Second) {
		t.Error("auto mode fell back to userspace without saying why")
	}
	if !b.stderr.waitFor("offloads=true", 5*time.Second) {
		t.Errorf("TUN offloads are off; log:\n%s", b.stderr.String())
	}

	pingUntil(t, nsA, "10.231.0.2", 20*time.Second)

	dev := a.device()
	if dev.PublicKey != keyA.PublicKey() || dev.ListenPort != port {
		t.Errorf("device key %s port %d, want %s port %d", dev.PublicKey, dev.ListenPort, keyA.PublicKey(), port)
	}
	if len(dev.Peers) != 1 {
		t.Fatalf("device has %d peers, want 1", len(dev.Peers))
	}
	p := dev.Peers[0]
	if p.PublicKey != keyB.PublicKey() || p.PresharedKey != psk {
		t.Errorf("peer %s with another preshared key than configured", p.PublicKey)
	}
	if p.LastHandshakeTime.IsZero() || p.ReceiveBytes == 0 {
		t.Errorf("peer shows no handshake (last %v, %d bytes received)", p.LastHandshakeTime, p.ReceiveBytes)
	}

	if _, err := exec.LookPath("wg"); err == nil {
		out, err := exec.Command("wg", "show", nameA).CombinedOutput()
		if err != nil {
			t.Fatalf("wg show %s: %v\n%s", nameA, err, out)
		}
		for _, want := range []string{keyB.PublicKey().String(), "latest handshake", "preshared key"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("wg show %s does not list %q:\n%s", nameA, want, out)
			}
		}
	}
	a.stop()
	b.stop()
}

// pingUntil pings dst from inside n until it answers or the time is up.
func pingUntil(t *testing.T, n ns.NetNS, dst string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var out []byte
	var err error
	for time.Now().Before(deadline) {
		err = n.Do(func(ns.NetNS) error {
			out, err = exec.Command("ping", "-c", "1", "-W", "1", "-n", dst).CombinedOutput()
			return err
		})
		if err == nil {
			return
		}
	}
	t.Fatalf("no answer from %s through the tunnel: %v\n%s", dst, err, out)
}

func TestTunnelSurvivesTheDaemon(t *testing.T) {
	needRoot(t)
	n := newNS(t)
	h := nlHandle(t, n)
	name := uniqueName(t)
	key := newKey(t)
	cfg := childConfig{Name: name, Mode: ModeUserspace, PrivateKey: key.String(), ListenPort: 51820, Addr: "10.232.0.1/24", Route: "10.233.0.0/16"}
	t.Cleanup(func() { n.Do(func(ns.NetNS) error { return DestroyTunnel(name) }) })

	first := startChild(t, n, cfg)
	if first.ready.Err != "" {
		t.Fatalf("open tunnel: %s", first.ready.Err)
	}
	checkDataPath := func(when string, index int) {
		t.Helper()
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatalf("%s: interface is gone: %v", when, err)
		}
		if link.Attrs().Index != index {
			t.Errorf("%s: interface index %d, want %d", when, link.Attrs().Index, index)
		}
		// Persistent, and with the virtio header that carries offloads,
		// the same on creation and reattachment.
		if tt, ok := link.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TUN || tt.NonPersist || tt.Flags&netlink.TUNTAP_VNET_HDR == 0 {
			t.Errorf("%s: interface is %#v, want a persistent TUN with IFF_VNET_HDR", when, link)
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.232.0.1/24" {
			t.Errorf("%s: addresses %v (%v), want 10.232.0.1/24", when, addrs, err)
		}
		routes, err := h.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == "10.233.0.0/16" {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: route 10.233.0.0/16 is gone: %v", when, routes)
		}
	}
	index := first.ready.Index
	checkDataPath("running", index)

	// A crash leaves the device with its addresses and routes.
	first.kill()
	checkDataPath("after the daemon was killed", index)

	// A new daemon reattaches to it, even without asking for userspace.
	cfg.Mode, cfg.Addr, cfg.Route = ModeAuto, "", ""
	second := startChild(t, n, cfg)
	if second.ready.Err != "" {
		t.Fatalf("reattach: %s", second.ready.Err)
	}
	if second.ready.Mode != ModeUserspace || second.ready.Index != index {
		t.Errorf("reattached as %s index %d, want userspace index %d", second.ready.Mode, second.ready.Index, index)
	}
	if !second.stderr.waitFor("reattaching to the existing tunnel device", 5*time.Second) {
		t.Error("did not say it reattached")
	}
	if dev := second.device(); dev.PublicKey != key.PublicKey() || dev.ListenPort != 51820 {
		t.Errorf("reattached device has key %s port %d", dev.PublicKey, dev.ListenPort)
	}
	checkDataPath("reattached", index)

	// A second daemon on the same device is refused.
	third := startChild(t, n, cfg)
	if !strings.Contains(third.ready.Err, "another process holds it") {
		t.Errorf("second daemon on the same device: err = %q, want it refused", third.ready.Err)
	}

	// A clean stop leaves the device too.
	second.stop()
	checkDataPath("after a clean stop", index)

	// Kernel mode does not replace a userspace device behind the user's back.
	cfg.Mode = ModeKernel
	fourth := startChild(t, n, cfg)
	if !strings.Contains(fourth.ready.Err, "exists as a userspace WireGuard device") {
		t.Errorf("kernel mode on a userspace device: err = %q", fourth.ready.Err)
	}

	if err := n.Do(func(ns.NetNS) error { return DestroyTunnel(name) }); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if _, err := h.LinkByName(name); err == nil {
		t.Error("DestroyTunnel left the interface")
	}
	if _, err := os.Stat(uapiSocketPath(name)); err == nil {
		t.Error("DestroyTunnel left the UAPI socket")
	}
	if err := n.Do(func(ns.NetNS) error { return DestroyTunnel(name) }); err != nil {
		t.Errorf("destroying a missing tunnel: %v", err)
	}
}

func TestTunnelSameNameInTwoNamespaces(t *testing.T) {
	needRoot(t)
	nsA, nsB := newNS(t), newNS(t)
	name := uniqueName(t)
	cfg := childConfig{Name: name, Mode: ModeUserspace, PrivateKey: newKey(t).String()}
	a := startChild(t, nsA, cfg)
	if a.ready.Err != "" {
		t.Fatalf("open tunnel: %s", a.ready.Err)
	}
	// UAPI sockets live in the file system, which both namespaces share.
	b := startChild(t, nsB, cfg)
	if !strings.Contains(b.ready.Err, "give each daemon its own --iface") {
		t.Errorf("second tunnel of the same name: err = %q, want the UAPI socket clash explained", b.ready.Err)
	}
	if _, err := nlHandle(t, nsB).LinkByName(name); err == nil {
		t.Error("the failed open left its TUN behind")
	}
	a.stop()
	if err := nsA.Do(func(ns.NetNS) error { return DestroyTunnel(name) }); err != nil {
		t.Fatal(err)
	}
}

// pairConfigs returns tunnel configurations for two nodes joined by
// underlay(t, a, b, "192.168.231.1/24", "192.168.231.2/24"), with overlay
// addresses 10.231.0.1 and 10.231.0.2.
func pairConfigs(t *testing.T, psk wgtypes.Key) (childConfig, childConfig) {
	nameA, nameB := uniqueName(t), uniqueName(t)
	keyA, keyB := newKey(t), newKey(t)
	a := childConfig{
		Name: nameA, Mode: ModeUserspace, PrivateKey: keyA.String(), ListenPort: 51820, Addr: "10.231.0.1/24",
		Peer: &childPeer{PublicKey: keyB.PublicKey().String(), PresharedKey: psk.String(), Endpoint: "192.168.231.2:51820", AllowedIP: "10.231.0.2/32"},
	}
	b := childConfig{
		Name: nameB, Mode: ModeUserspace, PrivateKey: keyB.String(), ListenPort: 51820, Addr: "10.231.0.2/24",
		Peer: &childPeer{PublicKey: keyA.PublicKey().String(), PresharedKey: psk.String(), Endpoint: "192.168.231.1:51820", AllowedIP: "10.231.0.1/32"},
	}
	return a, b
}

// TestTunnelTCPSurvivesADaemonRestart is the promise of DESIGN.md: a crash
// and restart of the daemon on one side costs a TCP connection through the
// tunnel a moment, not the connection.
func TestTunnelTCPSurvivesADaemonRestart(t *testing.T) {
	needRoot(t)
	nsA, nsB := newNS(t), newNS(t)
	underlay(t, nsA, nsB, "192.168.231.1/24", "192.168.231.2/24")
	cfgA, cfgB := pairConfigs(t, testSecret().PresharedKey())
	t.Cleanup(func() { nsA.Do(func(ns.NetNS) error { return DestroyTunnel(cfgA.Name) }) })
	a := startChild(t, nsA, cfgA)
	b := startChild(t, nsB, cfgB)
	for _, c := range []*child{a, b} {
		if c.ready.Err != "" {
			t.Fatalf("open tunnel: %s", c.ready.Err)
		}
	}

	roundTrip := tcpThrough(t, nsA, nsB)
	roundTrip("before the crash\n")

	a.kill()
	// The restarted daemon reattaches to the TUN and restores its peer,
	// as the daemon does from its state.
	cfgA.Mode, cfgA.Addr = ModeAuto, ""
	restarted := startChild(t, nsA, cfgA)
	if restarted.ready.Err != "" {
		t.Fatalf("restart: %s", restarted.ready.Err)
	}
	roundTrip("after the restart\n")
}

// tcpThrough connects from nsA to 10.231.0.2:7000 in nsB through the pair's
// tunnel and returns a function that sends msg and checks it arrives.
func tcpThrough(t *testing.T, nsA, nsB ns.NetNS) func(msg string) {
	t.Helper()
	// Sockets stay in the namespace they were made in.
	var ln net.Listener
	if err := nsB.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", "10.231.0.2:7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	var client net.Conn
	if err := nsA.Do(func(ns.NetNS) error {
		var err error
		d := net.Dialer{Timeout: 20 * time.Second}
		client, err = d.Dial("tcp4", "10.231.0.2:7000")
		return err
	}); err != nil {
		t.Fatalf("connect through the tunnel: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close() })

	return func(msg string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		client.SetDeadline(deadline)
		server.SetDeadline(deadline)
		if _, err := io.WriteString(client, msg); err != nil {
			t.Fatalf("send %q: %v", msg, err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(server, buf); err != nil || string(buf) != msg {
			t.Fatalf("receive %q: got %q, %v", msg, buf, err)
		}
	}
}

// TestTunnelHandover: a tunnel detached and opened again on the handed-over
// TUN (what a successor daemon does with the file it received) keeps its
// interface, key and peers, and a TCP connection through it goes on.
func TestTunnelHandover(t *testing.T) {
	needRoot(t)
	nsA, nsB := newNS(t), newNS(t)
	underlay(t, nsA, nsB, "192.168.231.1/24", "192.168.231.2/24")
	cfgA, cfgB := pairConfigs(t, testSecret().PresharedKey())
	t.Cleanup(func() { nsA.Do(func(ns.NetNS) error { return DestroyTunnel(cfgA.Name) }) })
	a := startChild(t, nsA, cfgA)
	b := startChild(t, nsB, cfgB)
	for _, c := range []*child{a, b} {
		if c.ready.Err != "" {
			t.Fatalf("open tunnel: %s", c.ready.Err)
		}
	}
	roundTrip := tcpThrough(t, nsA, nsB)
	roundTrip("before the handover\n")
	before := a.device()

	got := a.handover()
	if got.Err != "" {
		t.Fatalf("handover: %s", got.Err)
	}
	if got.Mode != ModeUserspace || got.Index != a.ready.Index {
		t.Errorf("after the handover: %s index %d, want userspace index %d", got.Mode, got.Index, a.ready.Index)
	}
	after := a.device()
	if after.PublicKey != before.PublicKey || after.ListenPort != before.ListenPort || len(after.Peers) != 1 {
		t.Fatalf("after the handover: key %s port %d %d peers, want %s %d 1", after.PublicKey, after.ListenPort, len(after.Peers), before.PublicKey, before.ListenPort)
	}
	p, q := after.Peers[0], before.Peers[0]
	if p.PublicKey != q.PublicKey || p.PresharedKey != q.PresharedKey || p.Endpoint.String() != q.Endpoint.String() ||
		len(p.AllowedIPs) != 1 || p.AllowedIPs[0].String() != q.AllowedIPs[0].String() {
		t.Errorf("peer after the handover %+v, want %+v", p, q)
	}
	start := time.Now()
	roundTrip("after the handover\n")
	if d := time.Since(start); d > time.Second {
		t.Errorf("the connection answered %v after the handover", d)
	}
}

func TestTunnelDoneWhenTheInterfaceIsDeleted(t *testing.T) {
	needRoot(t)
	n := newNS(t)
	name := uniqueName(t)
	c := startChild(t, n, childConfig{Name: name, Mode: ModeUserspace, PrivateKey: newKey(t).String()})
	if c.ready.Err != "" {
		t.Fatalf("open tunnel: %s", c.ready.Err)
	}
	if err := n.Do(func(ns.NetNS) error { return DestroyTunnel(name) }); err != nil {
		t.Fatal(err)
	}
	if err := c.waitDone(); err != nil {
		t.Fatalf("after the interface was deleted: %v", err)
	}
	c.stop() // Close after the device stopped by itself
	if _, err := os.Stat(uapiSocketPath(name)); err == nil {
		t.Error("the UAPI socket outlived the tunnel")
	}
}
