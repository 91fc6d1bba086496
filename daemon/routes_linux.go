package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeHandle is the part of netlink the route reconciler needs; a
// *netlink.Handle has it.
type routeHandle interface {
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
}

func (r route) netlink(linkIndex int) *netlink.Route {
	nr := &netlink.Route{
		Dst:      &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
		Protocol: routeProto,
		Table:    unix.RT_TABLE_MAIN,
		Family:   netlink.FAMILY_V4,
	}
	if r.Dst.Addr().Is6() {
		nr.Family = netlink.FAMILY_V6
	}
	if r.Unreachable {
		nr.Type = unix.RTN_UNREACHABLE
		// A guard loses against any real route of the same prefix.
		nr.Priority = 4096
		return nr
	}
	nr.LinkIndex = linkIndex
	nr.Scope = netlink.SCOPE_LINK
	if r.Src.IsValid() {
		nr.Src = r.Src.AsSlice()
	}
	return nr
}

func routeFromNetlink(nr netlink.Route) (route, bool) {
	if nr.Dst == nil {
		return route{}, false
	}
	a, ok := netip.AddrFromSlice(nr.Dst.IP)
	if !ok {
		return route{}, false
	}
	ones, _ := nr.Dst.Mask.Size()
	r := route{Dst: netip.PrefixFrom(a.Unmap(), ones), Unreachable: nr.Type == unix.RTN_UNREACHABLE}
	if s, ok := netip.AddrFromSlice(nr.Src); ok {
		r.Src = s.Unmap()
	}
	return r, true
}

// syncRoutes makes weft's routes in the main table exactly want: it removes
// weft routes that are not wanted (or point at another link) and replaces
// missing or different ones. Routes of other protocols are never touched.
func syncRoutes(h routeHandle, linkIndex int, want []route) error {
	have, err := weftRoutes(h)
	if err != nil {
		return err
	}
	wanted := make(map[route]bool, len(want))
	for _, r := range want {
		wanted[r] = true
	}
	present := make(map[route]bool, len(have))
	var errs []error
	for _, nr := range have {
		r, ok := routeFromNetlink(nr)
		if ok && wanted[r] && (r.Unreachable || nr.LinkIndex == linkIndex) {
			present[r] = true
			continue
		}
		if err := h.RouteDel(&nr); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", nr.Dst, err))
		}
	}
	for _, r := range want {
		if present[r] {
			continue
		}
		if err := h.RouteReplace(r.netlink(linkIndex)); err != nil {
			errs = append(errs, fmt.Errorf("add route %s: %w", r, err))
		}
	}
	return errors.Join(errs...)
}

// hasRoutes reports whether weft routes through the link are in the main
// table: a device reattached after the daemon before was killed still
// carries that daemon's routes.
func hasRoutes(h routeHandle, linkIndex int) (bool, error) {
	have, err := weftRoutes(h)
	if err != nil {
		return false, err
	}
	for _, nr := range have {
		if nr.LinkIndex == linkIndex {
			return true, nil
		}
	}
	return false, nil
}

// weftRoutes lists weft's routes in the main table, of both families.
func weftRoutes(h routeHandle) ([]netlink.Route, error) {
	have, err := h.RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{Protocol: routeProto, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return have, nil
}
