package daemon

import (
	"net/netip"
	"testing"
)

func TestDesiredRoutesGolden(t *testing.T) {
	self := netip.MustParseAddr("10.32.0.1")
	allowed := map[string][]netip.Prefix{
		"node2": pfx("10.32.64.0/18"),
		"node3": pfx("10.32.128.0/18", "10.32.192.0/18"),
		"node4": nil,
	}
	got := desiredRoutes(netip.MustParsePrefix("10.32.0.0/12"), self, allowed)
	golden(t, "routes", renderRoutes(got))
	if len(desiredRoutes(netip.Prefix{}, netip.Addr{}, nil)) != 0 {
		t.Error("no pod range and no peers should want no routes")
	}
}
