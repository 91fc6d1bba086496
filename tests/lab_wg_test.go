//go:build linux

package tests

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/netlab"
)

func init() {
	labHelpers["wireguard"] = wireguardHelper
}

// wireguardHelper runs in a node (the test binary started again): a
// userspace WireGuard device "weft" with its UAPI socket at the fixed path
// /var/run/wireguard/weft.sock, as weft's daemon makes it.
func wireguardHelper() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "wireguard helper:", err)
		os.Exit(1)
	}
	t, err := tun.CreateTUN("weft", 1420)
	if err != nil {
		fail(err)
	}
	dev := device.NewDevice(t, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, ""))
	f, err := ipc.UAPIOpen("weft")
	if err != nil {
		fail(err)
	}
	ln, err := ipc.UAPIListen("weft", f)
	if err != nil {
		fail(err)
	}
	if err := dev.IpcSet(os.Getenv("WEFT_LAB_WG_CONFIG")); err != nil {
		fail(err)
	}
	if err := dev.Up(); err != nil {
		fail(err)
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		go dev.IpcHandle(c)
	}
}

// TestLabUserspaceWireGuard runs real userspace WireGuard devices, both
// named weft, in two nodes: each node's wg sees its own device, a ping
// through the tunnel works, and the underlay carries only WireGuard UDP.
func TestLabUserspaceWireGuard(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 2)
	keys := make([]wgtypes.Key, 2)
	for i := range keys {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	for i, node := range n {
		peer := 1 - i
		cfg := fmt.Sprintf("private_key=%s\nlisten_port=6784\npublic_key=%s\nendpoint=%s:6784\nallowed_ip=10.9.0.%d/32\n",
			hexKey(keys[i]), hexKey(keys[peer].PublicKey()), n[peer].Addr, peer+1)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "WEFT_LAB_HELPER=wireguard", "WEFT_LAB_WG_CONFIG="+cfg)
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		p, err := node.StartCmd(cmd)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, func() error {
			if !p.Running() {
				t.Fatalf("wireguard helper in %s exited: %v", node.Name, p.Wait())
			}
			if _, err := os.Stat(filepath.Join(node.WireGuardDir(), "weft.sock")); err != nil {
				return fmt.Errorf("no UAPI socket in %s: %v", node.Name, err)
			}
			return nil
		})
		if out, err := node.Exec(ctx, "sh", "-c", fmt.Sprintf("ip addr add 10.9.0.%d/24 dev weft && ip link set weft up", i+1)); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	for i, node := range n {
		out, err := node.Exec(ctx, "wg", "show", "weft", "public-key")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != keys[i].PublicKey().String() {
			t.Errorf("wg show in %s reads key %s, want its own %s", node.Name, got, keys[i].PublicKey())
		}
	}
	// Other tests may run WireGuard on the host meanwhile: only a socket of
	// one of our nodes would be wrong there.
	if host, err := os.Stat("/run/wireguard/weft.sock"); err == nil {
		for _, node := range n {
			if ours, err := os.Stat(filepath.Join(node.WireGuardDir(), "weft.sock")); err == nil && os.SameFile(host, ours) {
				t.Errorf("the UAPI socket of %s is visible on the host", node.Name)
			}
		}
	}

	c, err := lab.Capture(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reach(t, ctx, n[0].Netns, netip10(2))
	reach(t, ctx, n[1].Netns, netip10(1))
	for _, p := range c.Stop() {
		if p.Proto == netlab.ProtoARP {
			continue
		}
		if p.Proto != netlab.ProtoUDP || p.SrcPort != 6784 || p.DstPort != 6784 {
			t.Errorf("on the underlay: %s %s:%d > %s:%d, want only WireGuard", p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort)
		}
	}
}

func netip10(host byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 9, 0, host}) }

func hexKey(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }
