package cniplugin

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/api"
)

// TestResultFamilies: an IPv4-only allocation gives the result it always
// gave; a dual-stack one adds the IPv6 address and default route after
// the IPv4 ones; an IPv6-only one has only those.
func TestResultFamilies(t *testing.T) {
	v6 := func(a *api.Allocation) {
		a.Address6 = netip.MustParsePrefix("fd10:32::5/128")
		a.Gateway6 = netip.MustParseAddr("fe80::1")
		a.PodCIDR6 = netip.MustParsePrefix("fd10:32::/48")
	}
	for _, tc := range []struct {
		name       string
		alloc      func(*api.Allocation)
		ips, route string
	}{
		{"IPv4 only", func(*api.Allocation) {}, "10.32.0.5/32 via 169.254.1.1", "0.0.0.0/0 via 169.254.1.1"},
		{"dual stack", v6, "10.32.0.5/32 via 169.254.1.1, fd10:32::5/128 via fe80::1", "0.0.0.0/0 via 169.254.1.1, ::/0 via fe80::1"},
		{"IPv6 only", func(a *api.Allocation) {
			v6(a)
			a.Address, a.Gateway, a.PodCIDR = netip.Prefix{}, netip.Addr{}, netip.Prefix{}
		}, "fd10:32::5/128 via fe80::1", "::/0 via fe80::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := testAllocation()
			tc.alloc(&a)
			if err := validAllocation(a); err != nil {
				t.Fatal(err)
			}
			r := newResult(a, link{Name: "wv0123456789abc"}, link{Name: "eth0", Sandbox: "/var/run/netns/x"})
			var ips, routes []string
			for _, ip := range r.IPs {
				if *ip.Interface != 1 {
					t.Errorf("address %s on interface %d, want 1 (the pod's)", ip.Address.String(), *ip.Interface)
				}
				ips = append(ips, fmt.Sprintf("%s via %s", ip.Address.String(), ip.Gateway))
			}
			for _, rt := range r.Routes {
				routes = append(routes, fmt.Sprintf("%s via %s", rt.Dst.String(), rt.GW))
			}
			if got := strings.Join(ips, ", "); got != tc.ips {
				t.Errorf("ips %s, want %s", got, tc.ips)
			}
			if got := strings.Join(routes, ", "); got != tc.route {
				t.Errorf("routes %s, want %s", got, tc.route)
			}
		})
	}
	bad := []func(*api.Allocation){
		func(a *api.Allocation) { v6(a); a.Address6 = netip.MustParsePrefix("fd10:32::/64") },
		func(a *api.Allocation) { v6(a); a.Address6 = netip.MustParsePrefix("10.32.0.6/32") },
		func(a *api.Allocation) { v6(a); a.Gateway6 = netip.Addr{} },
		func(a *api.Allocation) { v6(a); a.Address, a.Address6 = netip.Prefix{}, netip.Prefix{} },
	}
	for i, f := range bad {
		a := testAllocation()
		f(&a)
		if validAllocation(a) == nil {
			t.Errorf("bad case %d: %+v accepted", i, a)
		}
	}
}
