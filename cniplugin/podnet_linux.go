package cniplugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// podNet is the plumbing of one attachment: the wanted state that
// setupPod makes true, checkPod compares and teardownPod removes.
type podNet struct {
	PodNS    ns.NetNS // the pod's network namespace
	IfName   string   // the pod's end, CNI_IFNAME
	HostVeth string   // the host's end, HostVethName
	Address  netip.Prefix
	Gateway  netip.Addr
	MTU      int // 0 leaves the kernel's default
}

// hostSysctls are set on the host end: answer the pod's ARP for the
// gateway, and route what the pod sends.
var hostSysctls = []string{"proxy_arp", "forwarding"}

// setupPod makes the pod's and the host's side of one attachment what p
// says. It runs in the host's (node's) netns and is idempotent: a veth that
// is already there and paired right is reused and repaired, a stale host end
// is replaced. It returns both ends for the CNI result. On error the caller
// removes the host end (teardownPod), which takes the pod's end with it.
func setupPod(p podNet) (host, pod link, err error) {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return host, pod, fmt.Errorf("open the node's netns: %w", err)
	}
	defer hostNS.Close()

	hostLink, err := linkIfExists(p.HostVeth)
	if err != nil {
		return host, pod, err
	}
	reuse := false
	err = p.PodNS.Do(func(ns.NetNS) error {
		podLink, err := linkIfExists(p.IfName)
		switch {
		case err != nil:
			return err
		case podLink != nil && hostLink != nil && pairedWith(podLink, hostLink):
			reuse = true // ours from an earlier ADD: repair below
		case podLink != nil:
			return fmt.Errorf("interface %s already exists in netns %s and is not the peer of %s; delete it or choose another CNI_IFNAME",
				p.IfName, p.PodNS.Path(), p.HostVeth)
		}
		return nil
	})
	if err != nil {
		return host, pod, err
	}
	if !reuse {
		// A host end whose pod end is elsewhere is stale: replace it.
		if err := deleteLink(p.HostVeth); err != nil {
			return host, pod, err
		}
		err = p.PodNS.Do(func(ns.NetNS) error {
			_, _, err := ip.SetupVethWithName(p.IfName, p.HostVeth, p.MTU, "", hostNS)
			return err
		})
		if err != nil {
			return host, pod, fmt.Errorf("create veth pair %s/%s: %w", p.HostVeth, p.IfName, err)
		}
	}

	hostLink, err = netlinksafe.LinkByName(p.HostVeth)
	if err != nil {
		return host, pod, fmt.Errorf("find host interface %s: %w", p.HostVeth, err)
	}
	if err := p.setupHost(hostLink); err != nil {
		return host, pod, err
	}
	err = p.PodNS.Do(func(ns.NetNS) error {
		podLink, err := netlinksafe.LinkByName(p.IfName)
		if err != nil {
			return fmt.Errorf("find pod interface %s: %w", p.IfName, err)
		}
		pod = link{Name: p.IfName, MAC: podLink.Attrs().HardwareAddr.String(), Sandbox: p.PodNS.Path()}
		return p.setupPodSide(podLink, hostLink.Attrs().HardwareAddr)
	})
	host = link{Name: p.HostVeth, MAC: hostLink.Attrs().HardwareAddr.String()}
	return host, pod, err
}

// setupHost configures the host end: MTU, up, sysctls, and the route to
// the pod's address through it.
func (p podNet) setupHost(l netlink.Link) error {
	if err := setMTUUp(l, p.MTU); err != nil {
		return err
	}
	for _, key := range hostSysctls {
		if _, err := sysctl.Sysctl(fmt.Sprintf("net/ipv4/conf/%s/%s", p.HostVeth, key), "1"); err != nil {
			return fmt.Errorf("set net.ipv4.conf.%s.%s=1: %w", p.HostVeth, key, err)
		}
	}
	// Answer proxied ARP at once, not after up to proxy_delay (0.8 s), for
	// a pod whose neighbour entry of the gateway is gone.
	if _, err := sysctl.Sysctl(fmt.Sprintf("net/ipv4/neigh/%s/proxy_delay", p.HostVeth), "0"); err != nil {
		return fmt.Errorf("set net.ipv4.neigh.%s.proxy_delay=0: %w", p.HostVeth, err)
	}
	// The host end has no address of its own; IPv6 router advertisements
	// have nothing to do there.
	_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_ra", p.HostVeth), "0")
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(p.Address), Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("add route to %s via %s: %w", p.Address, p.HostVeth, err)
	}
	// Routes to an address the pod held before (the daemon lost its
	// allocation and gave another) would steal that address's traffic.
	routes, err := netlinksafe.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", p.HostVeth, err)
	}
	for _, old := range routes {
		if old.Dst != nil && old.Dst.String() != p.Address.String() {
			if err := netlink.RouteDel(&old); err != nil {
				return fmt.Errorf("remove stale route to %s via %s: %w", old.Dst, p.HostVeth, err)
			}
		}
	}
	return nil
}

// setupPodSide configures the pod's end, inside the pod's netns: MTU, up,
// the address as /32 (and no other IPv4 address), the gateway on-link with
// a permanent neighbour entry to the host end, and the default route.
func (p podNet) setupPodSide(l netlink.Link, hostMAC net.HardwareAddr) error {
	if err := setMTUUp(l, p.MTU); err != nil {
		return err
	}
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", p.IfName, err)
	}
	for _, a := range addrs {
		if a.IPNet.String() != p.Address.String() {
			if err := netlink.AddrDel(l, &a); err != nil {
				return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, p.IfName, err)
			}
		}
	}
	if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: ipNet(p.Address)}); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p.Address, p.IfName, err)
	}
	gw := net.IP(p.Gateway.AsSlice())
	idx := l.Attrs().Index
	onLink := &netlink.Route{LinkIndex: idx, Dst: ipNet(netip.PrefixFrom(p.Gateway, 32)), Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteReplace(onLink); err != nil {
		return fmt.Errorf("add on-link route to gateway %s on %s: %w", p.Gateway, p.IfName, err)
	}
	// Proxy ARP on the host end answers for the gateway when the node has
	// a route to it; the permanent entry makes the pod independent of the
	// node's routing table and saves the first ARP round trip.
	neigh := &netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}
	if err := netlink.NeighSet(neigh); err != nil {
		return fmt.Errorf("add neighbour %s on %s: %w", p.Gateway, p.IfName, err)
	}
	def := &netlink.Route{LinkIndex: idx, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: gw}
	if err := netlink.RouteReplace(def); err != nil {
		return fmt.Errorf("add default route via %s on %s: %w", p.Gateway, p.IfName, err)
	}
	return nil
}

// teardownPod removes the host end of an attachment, which takes the pod's
// end, its addresses and routes, and the host route with it. A missing link
// is not an error.
func teardownPod(hostVeth string) error {
	return deleteLink(hostVeth)
}

// hostVeths lists the host ends of weft pod veths in the current netns.
func hostVeths() ([]string, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var names []string
	for _, l := range links {
		if l.Type() == "veth" && IsHostVethName(l.Attrs().Name) {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}

// checkPod compares the attachment with what p says and describes every
// difference; none means all is as configured.
func checkPod(p podNet) []string {
	var diffs []string
	add := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }

	hostLink, err := linkIfExists(p.HostVeth)
	switch {
	case err != nil:
		add("%v", err)
	case hostLink == nil:
		add("host interface %s is missing", p.HostVeth)
	default:
		diffs = append(diffs, p.checkHost(hostLink)...)
	}
	err = p.PodNS.Do(func(ns.NetNS) error {
		podLink, err := linkIfExists(p.IfName)
		switch {
		case err != nil:
			return err
		case podLink == nil:
			add("pod interface %s is missing", p.IfName)
			return nil
		case hostLink != nil && !pairedWith(podLink, hostLink):
			add("pod interface %s is not the peer of host interface %s", p.IfName, p.HostVeth)
		}
		diffs = append(diffs, p.checkPodSide(podLink)...)
		return nil
	})
	if err != nil {
		add("cannot inspect netns %s: %v", p.PodNS.Path(), err)
	}
	return diffs
}

func (p podNet) checkHost(l netlink.Link) []string {
	var diffs []string
	diffs = append(diffs, checkMTUUp(l, p.MTU)...)
	for _, key := range hostSysctls {
		name := fmt.Sprintf("net/ipv4/conf/%s/%s", p.HostVeth, key)
		if v, err := sysctl.Sysctl(name); err != nil || strings.TrimSpace(v) != "1" {
			diffs = append(diffs, fmt.Sprintf("%s is %q, want 1", strings.ReplaceAll(name, "/", "."), v))
		}
	}
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Dst: ipNet(p.Address), Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return append(diffs, fmt.Sprintf("cannot list host routes: %v", err))
	}
	if !hasRoute(routes, l.Attrs().Index, nil) {
		diffs = append(diffs, fmt.Sprintf("host route to %s via %s is missing", p.Address, p.HostVeth))
	}
	return diffs
}

func (p podNet) checkPodSide(l netlink.Link) []string {
	name := l.Attrs().Name
	diffs := checkMTUUp(l, p.MTU)
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return append(diffs, fmt.Sprintf("cannot list addresses of %s: %v", name, err))
	}
	found := false
	for _, a := range addrs {
		if a.IPNet.String() == p.Address.String() {
			found = true
		} else {
			diffs = append(diffs, fmt.Sprintf("%s has address %s that weft did not give it", name, a.IPNet))
		}
	}
	if !found {
		diffs = append(diffs, fmt.Sprintf("%s lacks its address %s", name, p.Address))
	}
	routes, err := netlinksafe.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return append(diffs, fmt.Sprintf("cannot list routes of %s: %v", name, err))
	}
	gw := net.IP(p.Gateway.AsSlice())
	var gwRoutes, defRoutes []netlink.Route
	for _, r := range routes {
		switch {
		case r.Dst == nil || r.Dst.String() == "0.0.0.0/0":
			defRoutes = append(defRoutes, r)
		case r.Dst.String() == p.Gateway.String()+"/32":
			gwRoutes = append(gwRoutes, r)
		}
	}
	if !hasRoute(gwRoutes, l.Attrs().Index, nil) {
		diffs = append(diffs, fmt.Sprintf("pod route to gateway %s on %s is missing", p.Gateway, name))
	}
	if !hasRoute(defRoutes, l.Attrs().Index, gw) {
		diffs = append(diffs, fmt.Sprintf("pod default route via %s on %s is missing", p.Gateway, name))
	}
	return diffs
}

func hasRoute(routes []netlink.Route, linkIndex int, gw net.IP) bool {
	for _, r := range routes {
		if r.LinkIndex == linkIndex && (gw == nil && r.Gw == nil || gw != nil && gw.Equal(r.Gw)) {
			return true
		}
	}
	return false
}

func checkMTUUp(l netlink.Link, mtu int) []string {
	var diffs []string
	a := l.Attrs()
	if a.Flags&net.FlagUp == 0 {
		diffs = append(diffs, fmt.Sprintf("%s is down", a.Name))
	}
	if mtu != 0 && a.MTU != mtu {
		diffs = append(diffs, fmt.Sprintf("%s has MTU %d, want %d", a.Name, a.MTU, mtu))
	}
	return diffs
}

func setMTUUp(l netlink.Link, mtu int) error {
	if mtu != 0 && l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set MTU %d on %s: %w", mtu, l.Attrs().Name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
	}
	return nil
}

// pairedWith tells whether the pod's end and the host's end are the two
// ends of one veth: each names the other's index as its peer.
func pairedWith(pod, host netlink.Link) bool {
	return pod.Type() == "veth" && host.Type() == "veth" &&
		pod.Attrs().ParentIndex == host.Attrs().Index && host.Attrs().ParentIndex == pod.Attrs().Index
}

// linkIfExists returns the link called name in the current netns, or nil.
func linkIfExists(name string) (netlink.Link, error) {
	l, err := netlinksafe.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up interface %s: %w", name, err)
	}
	return l, nil
}

// deleteLink removes the link called name; gone already is fine.
func deleteLink(name string) error {
	err := ip.DelLinkByName(name)
	if err == nil || errors.Is(err, ip.ErrLinkNotFound) || errors.Is(err, unix.ENODEV) || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	// The kernel may remove the veth on its own (its netns went away)
	// between the lookup and the delete.
	if l, lerr := linkIfExists(name); lerr == nil && l == nil {
		return nil
	}
	return fmt.Errorf("delete interface %s: %w", name, err)
}

func ipNet(p netip.Prefix) *net.IPNet {
	n := prefixIPNet(p)
	return &n
}
