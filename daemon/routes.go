package daemon

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// routeProto marks the routes weft owns (RTPROT value 87, "W"), so the
// reconciler never touches a route someone else made.
const routeProto = 87

// route is one route weft wants in the main table.
type route struct {
	Dst         netip.Prefix
	Src         netip.Addr // preferred source: this node's tunnel address
	Unreachable bool       // an "unreachable" guard, not a route via the tunnel
}

// desiredRoutes returns the routes for the view: every peer's prefixes via
// the tunnel device with this node's tunnel address as source, and an
// unreachable guard for the whole pod range, so pod traffic for an address no
// peer owns is refused here and never leaves by the default route in clear.
// Routes to local pods (/32 via their veth, made by the CNI plugin) are more
// specific and win over both.
func desiredRoutes(podCIDR netip.Prefix, self netip.Addr, allowed map[string][]netip.Prefix) []route {
	var out []route
	if podCIDR.IsValid() {
		out = append(out, route{Dst: podCIDR.Masked(), Unreachable: true})
	}
	var all []netip.Prefix
	for _, ps := range allowed {
		all = append(all, ps...)
	}
	for _, p := range normalize(all) {
		if self.IsValid() && p.Contains(self) && p.Bits() == self.BitLen() {
			continue
		}
		out = append(out, route{Dst: p, Src: self})
	}
	sortRoutes(out)
	return out
}

// desiredRoutesFamilies is desiredRoutes for one pod range of each family
// (dual stack): each family's prefixes of allowed get that family's
// unreachable guard and its tunnel address of selfs as source.
func desiredRoutesFamilies(podCIDRs []netip.Prefix, selfs []netip.Addr, allowed map[string][]netip.Prefix) []route {
	var out []route
	for _, is4 := range []bool{true, false} {
		var cidr netip.Prefix
		var self netip.Addr
		for _, p := range podCIDRs {
			if p.Addr().Is4() == is4 {
				cidr = p
			}
		}
		for _, s := range selfs {
			if s.IsValid() && s.Is4() == is4 {
				self = s
			}
		}
		fam := make(map[string][]netip.Prefix, len(allowed))
		for name, ps := range allowed {
			for _, p := range ps {
				if p.Addr().Is4() == is4 {
					fam[name] = append(fam[name], p)
				}
			}
		}
		out = append(out, desiredRoutes(cidr, self, fam)...)
	}
	sortRoutes(out)
	return out
}

func sortRoutes(rs []route) {
	sort.Slice(rs, func(i, j int) bool { return routeLess(rs[i], rs[j]) })
}

func routeLess(a, b route) bool {
	if c := a.Dst.Addr().Compare(b.Dst.Addr()); c != 0 {
		return c < 0
	}
	if a.Dst.Bits() != b.Dst.Bits() {
		return a.Dst.Bits() < b.Dst.Bits()
	}
	return !a.Unreachable && b.Unreachable
}

func (r route) String() string {
	if r.Unreachable {
		return fmt.Sprintf("unreachable %s proto weft", r.Dst)
	}
	s := fmt.Sprintf("%s dev TUNNEL proto weft", r.Dst)
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	return s
}

func renderRoutes(rs []route) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	return b.String()
}
