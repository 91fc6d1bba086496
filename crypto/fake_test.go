package crypto

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/crypto/cryptotest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var _ WGClient = (*cryptotest.WGClient)(nil)

// fixedKey is a private key made of one repeated byte, for golden output.
func fixedKey(t *testing.T, b byte) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.NewKey([]byte(strings.Repeat(string(rune(b)), wgtypes.KeyLen)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCIDR(t *testing.T, s string) net.IPNet {
	t.Helper()
	ip, ipn, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	ipn.IP = ip // keep host bits, to see them masked
	return *ipn
}

// configSteps is a sequence of configurations that exercises every rule of
// wgtypes.Config. Endpoints are documentation addresses; nothing sends to
// them, as no peer has traffic or a keepalive with an endpoint.
func configSteps(t *testing.T) []wgtypes.Config {
	k1, k2, k3 := fixedKey(t, 1).PublicKey(), fixedKey(t, 2).PublicKey(), fixedKey(t, 3).PublicKey()
	psk := testSecret().PresharedKey()
	port := 51999
	keepalive := 25 * time.Second
	return []wgtypes.Config{
		{ListenPort: &port, Peers: []wgtypes.PeerConfig{
			{PublicKey: k1, PresharedKey: &psk, Endpoint: &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1000},
				AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.1.0/24"), mustCIDR(t, "10.0.2.5/32")}},
			{PublicKey: k2, PersistentKeepaliveInterval: &keepalive, AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.3.0/24")}},
		}},
		// An allowed IP moves from k1 to k2.
		{Peers: []wgtypes.PeerConfig{{PublicKey: k2, AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.1.0/24")}}}},
		// UpdateOnly does not create a peer.
		{Peers: []wgtypes.PeerConfig{{PublicKey: k3, UpdateOnly: true, AllowedIPs: []net.IPNet{mustCIDR(t, "10.9.0.0/16")}}}},
		// Replace k1's allowed IPs, given with host bits set.
		{Peers: []wgtypes.PeerConfig{{PublicKey: k1, ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.4.7/24")}}}},
		// Remove k2; removing a missing peer is no error.
		{Peers: []wgtypes.PeerConfig{{PublicKey: k2, Remove: true}, {PublicKey: k3, Remove: true}}},
		// Replace all peers.
		{ReplacePeers: true, Peers: []wgtypes.PeerConfig{
			{PublicKey: k3, Endpoint: &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 51820},
				AllowedIPs: []net.IPNet{mustCIDR(t, "fd00::/64"), mustCIDR(t, "10.0.5.0/24")}},
		}},
	}
}

// renderDevice prints what a device's configuration is, in a fixed order:
// keys, port, and each peer with its sorted allowed IPs. Run-time state
// (handshakes, counters) is left out.
func renderDevice(d *wgtypes.Device) string {
	var b strings.Builder
	fmt.Fprintf(&b, "public key %s port %d mark %d\n", d.PublicKey, d.ListenPort, d.FirewallMark)
	peers := slices.Clone(d.Peers)
	slices.SortFunc(peers, func(a, b wgtypes.Peer) int { return strings.Compare(a.PublicKey.String(), b.PublicKey.String()) })
	for _, p := range peers {
		ep := "none"
		if p.Endpoint != nil {
			ep = p.Endpoint.String()
		}
		var ips []string
		for _, ipn := range p.AllowedIPs {
			ips = append(ips, ipn.String())
		}
		slices.Sort(ips)
		fmt.Fprintf(&b, "  peer %s psk %t endpoint %s keepalive %s allowed %s\n",
			p.PublicKey, p.PresharedKey != wgtypes.Key{}, ep, p.PersistentKeepaliveInterval, strings.Join(ips, ","))
	}
	return b.String()
}

// TestFakeWGClientGolden records what the fake makes of configSteps;
// TestFakeWGClientMatchesWireGuardGo (root) checks the same against
// wireguard-go.
func TestFakeWGClientGolden(t *testing.T) {
	const name = "weft"
	fake := cryptotest.NewWGClient(name)
	key := fixedKey(t, 9)
	if err := fake.ConfigureDevice(name, wgtypes.Config{PrivateKey: &key}); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for i, step := range configSteps(t) {
		if err := fake.ConfigureDevice(name, step); err != nil {
			t.Fatal(err)
		}
		dev, err := fake.Device(name)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&out, "step %d:\n%s", i+1, renderDevice(dev))
	}
	golden := filepath.Join("testdata", "fake_steps.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if out.String() != string(want) {
		t.Errorf("fake device states differ from %s (go test -update rewrites it):\n%s", golden, out.String())
	}
	if got := fake.ConfigureCalls(); got != len(configSteps(t))+1 {
		t.Errorf("ConfigureCalls = %d, want %d", got, len(configSteps(t))+1)
	}
}

func TestFakeWGClientErrors(t *testing.T) {
	fake := cryptotest.NewWGClient("weft")
	if _, err := fake.Device("other"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing device: err = %v", err)
	}
	boom := errors.New("boom")
	fake.SetError(boom)
	if err := fake.ConfigureDevice("weft", wgtypes.Config{}); !errors.Is(err, boom) {
		t.Errorf("SetError: err = %v", err)
	}
	fake.SetError(nil)
	fake.Close()
	if _, err := fake.Device("weft"); err == nil || !fake.Closed() {
		t.Error("a closed fake still answers")
	}
}
