package daemon

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// testKey returns a fixed, recognisable public key for tests.
func testKey(b byte) wgtypes.Key {
	var k wgtypes.Key
	for i := range k {
		k[i] = b
	}
	return k
}

func udp(s string) *net.UDPAddr {
	ap := netip.MustParseAddrPort(s)
	return net.UDPAddrFromAddrPort(ap)
}

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// applyToDevice plays what WireGuard does with cfgs, so a second diff can be
// checked to be empty.
func applyToDevice(cur []wgtypes.Peer, cfgs []wgtypes.PeerConfig) []wgtypes.Peer {
	byKey := map[wgtypes.Key]*wgtypes.Peer{}
	var order []wgtypes.Key
	for i := range cur {
		p := cur[i]
		byKey[p.PublicKey] = &p
		order = append(order, p.PublicKey)
	}
	for _, pc := range cfgs {
		if pc.Remove {
			delete(byKey, pc.PublicKey)
			continue
		}
		p, ok := byKey[pc.PublicKey]
		if !ok {
			p = &wgtypes.Peer{PublicKey: pc.PublicKey}
			byKey[pc.PublicKey] = p
			order = append(order, pc.PublicKey)
		}
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = pc.AllowedIPs
		}
	}
	var out []wgtypes.Peer
	for _, k := range order {
		if p, ok := byKey[k]; ok {
			out = append(out, *p)
		}
	}
	return out
}

func TestDiffPeersGolden(t *testing.T) {
	psk := testKey(9)
	b := peer{Name: "node2", PublicKey: testKey(2), Endpoint: udp("172.30.0.2:6784"),
		TunnelAddr: netip.MustParseAddr("10.32.64.1"), Ranges: pfx("10.32.64.0/18")}
	c := peer{Name: "node3", PublicKey: testKey(3), Endpoint: udp("172.30.0.3:6784"),
		TunnelAddr: netip.MustParseAddr("10.32.128.1"), Ranges: pfx("10.32.128.0/17")}
	names := map[wgtypes.Key]string{testKey(2): "node2", testKey(3): "node3", testKey(4): "node4", testKey(5): "node3"}
	base := meshView{PSK: &psk, Keepalive: 25 * time.Second, Peers: []peer{b, c}}
	fresh := applyToDevice(nil, diffPeers(nil, base, endpointMemory{}))
	roamed := applyToDevice(nil, diffPeers(nil, base, endpointMemory{}))
	roamed[1].Endpoint = udp("198.51.100.7:40001")

	relayed := base
	relayed.Peers = []peer{b, c}
	relayed.Peers[1].RelayVia = "node2"

	// With probe addresses, a relayed peer's own entry keeps its probe
	// address, so the probes take the direct path.
	probed := base
	probed.Peers = []peer{b, c}
	probed.Peers[0].ProbeAddr = probed.Peers[0].TunnelAddr.Next()
	probed.Peers[1].ProbeAddr = probed.Peers[1].TunnelAddr.Next()
	probed.Peers[1].RelayVia = "node2"

	moved := base
	moved.Peers = []peer{b, c}
	moved.Peers[1].Endpoint = udp("172.30.1.3:6784")
	moved.Peers[1].Ranges = pfx("10.32.128.0/18", "10.32.192.0/18")

	// node3 switched to a new key: one change adds the new entry with its
	// allowed IPs and removes the old one.
	switched := base
	switched.Peers = []peer{b, c}
	switched.Peers[1].PublicKey = testKey(5)

	// node2 and this node both hold a new cluster secret: only that pair's
	// preshared key changes.
	newPSK := testKey(8)
	pskMoved := base
	pskMoved.Peers = []peer{b, c}
	pskMoved.Peers[0].PSK = &newPSK

	stale := append(applyToDevice(nil, diffPeers(nil, base, endpointMemory{})), wgtypes.Peer{PublicKey: testKey(4)})

	mem := func() endpointMemory {
		m := endpointMemory{}
		m.remember(diffPeers(nil, base, endpointMemory{}))
		return m
	}
	tests := []struct {
		name string
		cur  []wgtypes.Peer
		view meshView
		mem  endpointMemory
	}{
		{"peers-fresh", nil, base, endpointMemory{}},
		{"peers-unchanged", fresh, base, mem()},
		{"peers-roamed-endpoint-kept", roamed, base, mem()},
		{"peers-advertised-endpoint-changed", fresh, moved, mem()},
		{"peers-relayed", fresh, relayed, mem()},
		{"peers-relayed-probe-direct", fresh, probed, mem()},
		{"peers-dead-removed", stale, base, mem()},
		{"peers-key-switched", fresh, switched, mem()},
		{"peers-psk-moved", fresh, pskMoved, mem()},
		{"peers-insecure", nil, meshView{Peers: []peer{b}}, endpointMemory{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfgs := diffPeers(tt.cur, tt.view, tt.mem)
			golden(t, tt.name, renderPeerConfigs(cfgs, names))
			// Applying the diff reaches the view: a second diff is empty.
			m := tt.mem
			m.remember(cfgs)
			if again := diffPeers(applyToDevice(tt.cur, cfgs), tt.view, m); len(again) != 0 {
				t.Errorf("diff not idempotent; second diff:\n%s", renderPeerConfigs(again, names))
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	got := normalize(pfx("10.32.1.0/24", "10.32.0.0/16", "10.32.0.5/32", "10.0.0.0/8", "10.48.0.0/16", "10.48.0.0/16"))
	want := pfx("10.0.0.0/8")
	if !samePrefixes(got, want) || len(got) != 1 {
		t.Fatalf("normalize = %v, want %v", got, want)
	}
	got = normalize(pfx("10.33.0.0/16", "10.32.0.1/32", "10.32.0.0/16"))
	if len(got) != 1 || got[0] != netip.MustParsePrefix("10.32.0.0/15") {
		t.Fatalf("normalize = %v", got)
	}
}

func TestNormalizeJoinsSiblings(t *testing.T) {
	tests := []struct{ in, want []netip.Prefix }{
		{pfx("10.32.128.0/18", "10.32.192.0/18"), pfx("10.32.128.0/17")},
		{pfx("10.32.0.0/18", "10.32.64.0/18", "10.32.128.0/17"), pfx("10.32.0.0/16")},
		{pfx("10.32.64.0/18", "10.32.128.0/18"), pfx("10.32.64.0/18", "10.32.128.0/18")},
		{pfx("10.32.0.1/32", "10.32.0.0/32"), pfx("10.32.0.0/31")},
	}
	for _, tt := range tests {
		if got := normalize(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("normalize(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestCheckTunnelAddr(t *testing.T) {
	pod := netip.MustParsePrefix("10.32.0.0/12")
	ranges := map[string][]netip.Prefix{
		"a": {netip.MustParsePrefix("10.32.0.0/13")},
		"b": {netip.MustParsePrefix("10.40.0.0/14"), netip.MustParsePrefix("10.44.0.0/14")},
	}
	for _, c := range []struct {
		name, addr, want string
	}{
		{"a", "10.32.0.1", ""},
		{"b", "10.44.0.9", ""},
		{"b", "", ""},
		{"a", "10.40.0.1", "which the address ring gives to b"},
		{"c", "10.32.0.1", "which the address ring gives to a"},
		{"c", "192.0.2.1", "outside the pod range 10.32.0.0/12"},
		{"a", "fd00::1", "outside the pod range"},
	} {
		var addr netip.Addr
		if c.addr != "" {
			addr = netip.MustParseAddr(c.addr)
		}
		got := checkTunnelAddr(c.name, addr, pod, ranges)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s announcing %q: %q, want %q", c.name, c.addr, got, c.want)
		}
	}
	unowned := map[string][]netip.Prefix{"a": {netip.MustParsePrefix("10.32.0.0/13")}}
	if got := checkTunnelAddr("c", netip.MustParseAddr("10.40.0.1"), pod, unowned); !strings.Contains(got, "gives to no node") {
		t.Errorf("an address nobody owns: %q", got)
	}
}
