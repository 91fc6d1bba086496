package cli

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/ipalloc"
)

// TestPrintDualStack: status shows the IPv6 tunnel addresses, range and
// ranges of a dual-stack node beside the IPv4 ones.
func TestPrintDualStack(t *testing.T) {
	var b strings.Builder
	err := printPeers(&b, daemon.PeersStatus{Node: "node1", Ready: true, TunnelAddr: "10.40.0.1", TunnelAddr6: "fd10:40::1",
		Peers: []daemon.PeerStatus{{Name: "node2", State: "alive", Path: "direct", TunnelAddr: "10.40.128.0", TunnelAddr6: "fd10:40::8000"}}})
	if err != nil {
		t.Fatal(err)
	}
	err = printIPAM(&b, ipalloc.Status{Self: "node1", Ready: true, Range: netip.MustParsePrefix("10.40.0.0/16"), Range6: netip.MustParsePrefix("fd10:40::/48"),
		Nodes: []ipalloc.NodeStatus{{Name: "node1", Reachable: true, Ranges: []netip.Prefix{netip.MustParsePrefix("10.40.0.0/17")},
			Ranges6: []netip.Prefix{netip.MustParsePrefix("fd10:40::/113")}}}})
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"tunnel 10.40.0.1,fd10:40::1 ", "10.40.128.0,fd10:40::8000", "pod range 10.40.0.0/16 with fd10:40::/48", "10.40.0.0/17,fd10:40::/113"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}
