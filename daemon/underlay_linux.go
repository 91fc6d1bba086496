package daemon

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// underlay is the node's address on the network between nodes and the MTU
// of the interface that carries it.
type underlay struct {
	Addr  netip.Addr
	Iface string
	MTU   int
}

// findUnderlay resolves --listen: the given address, or the first IPv4
// address of the default route's interface; either way the MTU of the
// interface that holds it.
func findUnderlay(listen string) (underlay, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return underlay{}, fmt.Errorf("list links: %w", err)
	}
	if listen != "" {
		want, err := netip.ParseAddr(listen)
		if err != nil {
			return underlay{}, fmt.Errorf("--listen %q: want an IP address: %w", listen, err)
		}
		for _, l := range links {
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == want {
					return underlay{Addr: want, Iface: l.Attrs().Name, MTU: l.Attrs().MTU}, nil
				}
			}
		}
		return underlay{}, fmt.Errorf("--listen %s: no interface of this node has that address", want)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, 0)
	if err != nil {
		return underlay{}, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && !(r.Dst.IP.Equal(net.IPv4zero) && isZeroMask(r.Dst.Mask)) {
			continue
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			continue
		}
		ip, _ := netip.AddrFromSlice(addrs[0].IP)
		return underlay{Addr: ip.Unmap(), Iface: l.Attrs().Name, MTU: l.Attrs().MTU}, nil
	}
	return underlay{}, fmt.Errorf("no default route to guess the underlay address from: set --listen")
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}
