package daemon

import (
	"net/netip"
	"strings"
	"testing"
)

// TestDesiredRoutesDualStackGolden: each family gets its unreachable guard
// and its peers' ranges via the tunnel, with that family's tunnel address
// as source.
func TestDesiredRoutesDualStackGolden(t *testing.T) {
	allowed := map[string][]netip.Prefix{
		"node2": pfx("10.32.64.0/18", "fd10:32::4000/114"),
		"node3": pfx("10.32.128.0/17", "fd10:32::8000/113", "fd10:32::9/128"),
	}
	got := desiredRoutesFamilies(pfx("10.32.0.0/16", "fd10:32::/48"),
		[]netip.Addr{netip.MustParseAddr("10.32.0.1"), netip.MustParseAddr("fd10:32::1")}, allowed)
	golden(t, "routes-dual-stack", renderRoutes(got))
	// IPv4 only: exactly what desiredRoutes gives.
	v4 := map[string][]netip.Prefix{"node2": pfx("10.32.64.0/18")}
	self := netip.MustParseAddr("10.32.0.1")
	if a, b := renderRoutes(desiredRoutesFamilies(pfx("10.32.0.0/16"), []netip.Addr{self, {}}, v4)),
		renderRoutes(desiredRoutes(netip.MustParsePrefix("10.32.0.0/16"), self, v4)); a != b {
		t.Errorf("IPv4-only routes differ from before dual stack:\n%s\nwant\n%s", a, b)
	}
}

// TestAllowedIPsDualStack: a peer's WireGuard allowed IPs carry its IPv6
// ranges and its IPv6 tunnel address beside the IPv4 ones.
func TestAllowedIPsDualStack(t *testing.T) {
	v := meshView{Peers: []peer{{
		Name:        "node2",
		TunnelAddr:  netip.MustParseAddr("10.32.64.1"),
		TunnelAddr6: netip.MustParseAddr("fd10:32::4001"),
		Ranges:      pfx("10.32.64.0/18", "fd10:32::4000/114"),
	}, {
		// An IPv6 tunnel address outside the peer's ranges (kept by an
		// earlier life) is carried as a /128.
		Name:        "node3",
		TunnelAddr:  netip.MustParseAddr("10.32.128.1"),
		TunnelAddr6: netip.MustParseAddr("fd10:32::9"),
		Ranges:      pfx("10.32.128.0/17", "fd10:32::8000/113"),
	}}}
	got := v.allowedIPs()
	for name, want := range map[string]string{
		"node2": "[10.32.64.0/18 fd10:32::4000/114]",
		"node3": "[10.32.128.0/17 fd10:32::9/128 fd10:32::8000/113]",
	} {
		if s := prefixList(got[name]); s != want {
			t.Errorf("allowed IPs of %s: %s, want %s", name, s, want)
		}
	}
}

func prefixList(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return "[" + strings.Join(s, " ") + "]"
}

// TestCheckTunnelAddrPerFamily: the claims check holds for the IPv6 tunnel
// address as for the IPv4 one: inside the IPv6 pod range and inside the
// IPv6 ranges the ring gives the peer.
func TestCheckTunnelAddrPerFamily(t *testing.T) {
	pod6 := netip.MustParsePrefix("fd10:32::/48")
	ranges := map[string][]netip.Prefix{
		"b": pfx("10.32.0.0/17", "fd10:32::/113"),
		"c": pfx("10.32.128.0/17", "fd10:32::8000/113"),
	}
	for _, tc := range []struct {
		name, addr, want string
	}{
		{"b", "fd10:32::5", ""},
		{"b", "fd10:32::8005", "which the address ring gives to c"},
		{"b", "fd10:33::5", "outside the pod range fd10:32::/48"},
		{"b", "fd10:32::1:5", "gives to no node"},
	} {
		got := checkTunnelAddr(tc.name, netip.MustParseAddr(tc.addr), pod6, ranges)
		if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("checkTunnelAddr(%s, %s) = %q, want %q", tc.name, tc.addr, got, tc.want)
		}
	}
	// A node without an IPv6 range refuses a peer's IPv6 tunnel address:
	// no range of the ring covers it.
	v4only := map[string][]netip.Prefix{"b": pfx("10.32.0.0/17")}
	if got := checkTunnelAddr("b", netip.MustParseAddr("fd10:32::5"), netip.Prefix{}, v4only); !strings.Contains(got, "gives to no node") {
		t.Errorf("IPv6 tunnel address on an IPv4-only node: %q, want a refusal", got)
	}
}

// TestDesiredRoutesIPv6Only: with one IPv6 pod range, the node's IPv6
// tunnel address is the source of the routes to its peers' ranges.
func TestDesiredRoutesIPv6Only(t *testing.T) {
	got := renderRoutes(desiredRoutesFamilies(pfx("fd10:41::/48"), []netip.Addr{netip.MustParseAddr("fd10:41::1"), {}},
		map[string][]netip.Prefix{"node2": pfx("fd10:41::8000:0/97")}))
	want := "unreachable fd10:41::/48 proto weft\nfd10:41::8000:0/97 dev TUNNEL proto weft src fd10:41::1\n"
	if got != want {
		t.Errorf("routes:\n%s\nwant\n%s", got, want)
	}
}
