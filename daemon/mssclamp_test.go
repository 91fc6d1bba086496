package daemon

import (
	"net/netip"
	"testing"
)

func TestClampRules(t *testing.T) {
	peers := []peer{
		// Behind a 1280 VPN: its ranges and its tunnel address are clamped.
		{Name: "node3", TunnelAddr: netip.MustParseAddr("10.40.0.1"), Ranges: pfx("10.40.0.0/14", "10.36.0.0/14")},
		// A full-size path: nothing to clamp.
		{Name: "node2", TunnelAddr: netip.MustParseAddr("10.32.0.1"), Ranges: pfx("10.32.0.0/14")},
		// Not measured yet: nothing to clamp.
		{Name: "node4", TunnelAddr: netip.MustParseAddr("10.44.0.1"), Ranges: pfx("10.44.0.0/15")},
		// A tunnel address outside its ranges gets its own rule.
		{Name: "node5", TunnelAddr: netip.MustParseAddr("10.46.0.9"), Ranges: pfx("10.47.0.0/16")},
		// Dual stack: its IPv6 range is clamped 20 bytes lower (a larger
		// IP header), and its IPv6 tunnel address lies in that range.
		{Name: "node6", TunnelAddr: netip.MustParseAddr("10.48.0.1"), TunnelAddr6: netip.MustParseAddr("fd10:40::1"),
			Ranges: pfx("10.48.0.0/16", "fd10:40::/64")},
	}
	results := map[string]int{"node3": 1216, "node2": 1420, "node5": 1380, "node6": 1280}
	got := clampRules(peers, results, 1420)
	golden(t, "mss-clamp", renderClampRules(got))

	for _, r := range got {
		if r.Peer == "node2" || r.Peer == "node4" {
			t.Errorf("rule for %s, whose path is full size or unknown: %s", r.Peer, r)
		}
	}
	if rs := clampRules(peers, map[string]int{}, 1420); len(rs) != 0 {
		t.Errorf("rules without any result: %v", rs)
	}
}
