package cniplugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// podNet is the plumbing of one attachment: the wanted state that
// setupVeth and configure make true, checkPod compares and teardownPod
// removes.
type podNet struct {
	PodNS    ns.NetNS // the pod's network namespace
	IfName   string   // the pod's end, CNI_IFNAME
	HostVeth string   // the host's end, HostVethName
	Address  netip.Prefix
	Gateway  netip.Addr
	// Address6 and Gateway6 are the pod's IPv6 address (a /128) and
	// link-local next hop in a dual-stack cluster; zero otherwise.
	Address6 netip.Prefix
	Gateway6 netip.Addr
	MTU      int // 0 leaves the kernel's default
}

// hostSysctls are set on the host end: answer the pod's ARP for the
// gateway, route what the pod sends, and check its source loosely. Loose
// (2), not off, because the kernel uses the larger of conf.all and the
// interface's value: 2 holds on a host whose conf.all.rp_filter is 1
// (strict), which the plugin leaves as the operator set it, and 0 would
// not.
var hostSysctls = [][2]string{{"proxy_arp", "1"}, {"forwarding", "1"}, {"rp_filter", "2"}}

// handles are netlink sockets in the node's netns and in the pod's, opened
// once per call: the setup then needs no thread that enters the pod's netns
// and no new socket for each request.
type handles struct {
	host, pod netlinksafe.Handle
}

// openHandles opens the node's (the current) and the pod's netlink sockets.
func openHandles(podNS ns.NetNS) (handles, error) {
	host, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return handles{}, fmt.Errorf("open netlink in the node's netns: %w", err)
	}
	pod, err := netlinksafe.NewHandleAt(netns.NsHandle(podNS.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		host.Close()
		return handles{}, fmt.Errorf("open netlink in netns %s: %w", podNS.Path(), err)
	}
	return handles{host: host, pod: pod}, nil
}

func (h handles) Close() {
	h.host.Close()
	h.pod.Close()
}

// setupVeth makes the veth pair of the attachment and sets the host end's
// sysctls; it needs neither the address nor the MTU, so ADD runs it while
// the daemon allocates. A pair that is already there and paired right (from
// an earlier ADD) is reused, for configure to repair; a stale host end is
// replaced. created tells whether it made the pair. p.MTU may be 0 (the
// kernel's default) until configure sets it.
func (p podNet) setupVeth(h handles) (created bool, err error) {
	hostLink, err := linkIn(h.host, p.HostVeth)
	if err != nil {
		return false, err
	}
	podLink, err := linkIn(h.pod, p.IfName)
	switch {
	case err != nil:
		return false, err
	case podLink != nil && hostLink != nil && pairedWith(podLink, hostLink):
		// ours from an earlier ADD
	case podLink != nil:
		return false, fmt.Errorf("interface %s already exists in netns %s and is not the peer of %s; delete it or choose another CNI_IFNAME",
			p.IfName, p.PodNS.Path(), p.HostVeth)
	default:
		// A host end whose pod end is elsewhere is stale: replace it.
		if hostLink != nil {
			if err := h.host.LinkDel(hostLink); err != nil && !errors.Is(err, unix.ENODEV) {
				return false, fmt.Errorf("delete stale interface %s: %w", p.HostVeth, err)
			}
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = p.HostVeth
		attrs.MTU = p.MTU
		veth := netlink.NewVeth(attrs)
		veth.PeerName = p.IfName
		veth.PeerNamespace = netlink.NsFd(int(p.PodNS.Fd()))
		if err := h.host.LinkAdd(veth); err != nil {
			return false, fmt.Errorf("create veth pair %s/%s: %w", p.HostVeth, p.IfName, err)
		}
		created = true
	}
	return created, p.setHostSysctls()
}

// setHostSysctls sets what the host end needs to stand in for the gateway.
func (p podNet) setHostSysctls() error {
	for _, kv := range hostSysctls {
		if _, err := sysctl.Sysctl(fmt.Sprintf("net/ipv4/conf/%s/%s", p.HostVeth, kv[0]), kv[1]); err != nil {
			return fmt.Errorf("set net.ipv4.conf.%s.%s=%s: %w", p.HostVeth, kv[0], kv[1], err)
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
	return nil
}

// configure makes both ends of the pair setupVeth made what p says (MTU,
// up, address, routes, neighbour) and returns them for the CNI result.
func (p podNet) configure(h handles) (host, pod link, err error) {
	hostLink, err := h.host.LinkByName(p.HostVeth)
	if err != nil {
		return host, pod, fmt.Errorf("find host interface %s: %w", p.HostVeth, err)
	}
	if err := p.setupHost(h.host, hostLink); err != nil {
		return host, pod, err
	}
	podLink, err := h.pod.LinkByName(p.IfName)
	if err != nil {
		return host, pod, fmt.Errorf("find pod interface %s: %w", p.IfName, err)
	}
	host = link{Name: p.HostVeth, MAC: hostLink.Attrs().HardwareAddr.String()}
	pod = link{Name: p.IfName, MAC: podLink.Attrs().HardwareAddr.String(), Sandbox: p.PodNS.Path()}
	if err := p.setupPodSide(h.pod, podLink, hostLink.Attrs().HardwareAddr); err != nil {
		return host, pod, err
	}
	if p.Address6.IsValid() {
		// The node's neighbour entry of the pod's IPv6 address, made
		// permanent as the pod's of its gateway is: neighbour discovery
		// towards a pod whose interface has just come up can go
		// unanswered while the pod's link-local address is tentative.
		neigh := &netlink.Neigh{LinkIndex: hostLink.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
			IP: net.IP(p.Address6.Addr().AsSlice()), HardwareAddr: podLink.Attrs().HardwareAddr}
		if err := h.host.NeighSet(neigh); err != nil {
			return host, pod, fmt.Errorf("add neighbour %s on %s: %w", p.Address6.Addr(), p.HostVeth, err)
		}
	}
	return host, pod, nil
}

// setupHost configures the host end: MTU, up, and the route to the pod's
// address through it.
func (p podNet) setupHost(h netlinksafe.Handle, l netlink.Link) error {
	if err := setMTUUp(h, l, p.MTU); err != nil {
		return err
	}
	if p.Address.IsValid() { // not in an IPv6-only cluster
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(p.Address), Scope: netlink.SCOPE_LINK}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("add route to %s via %s: %w", p.Address, p.HostVeth, err)
		}
	}
	// Routes to an address the pod held before (the daemon lost its
	// allocation and gave another) would steal that address's traffic.
	routes, err := h.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", p.HostVeth, err)
	}
	for _, old := range routes {
		if old.Dst != nil && old.Dst.String() != p.Address.String() {
			if err := h.RouteDel(&old); err != nil {
				return fmt.Errorf("remove stale route to %s via %s: %w", old.Dst, p.HostVeth, err)
			}
		}
	}
	return p.setupHost6(h, l)
}

// setupHost6 routes the pod's IPv6 address through the host end (dual
// stack) and removes routes to IPv6 addresses it held before; the
// kernel's own routes (link-local, multicast) stay.
func (p podNet) setupHost6(h netlinksafe.Handle, l netlink.Link) error {
	if p.Address6.IsValid() {
		// The host end routes the pod's IPv6 traffic: IPv6 on, even on a
		// node whose new interfaces start without it. (Set here, not in
		// setupVeth: ADD learns that the pod has an IPv6 address only
		// from the daemon's answer.)
		if _, err := sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", p.HostVeth), "0"); err != nil {
			return fmt.Errorf("set net.ipv6.conf.%s.disable_ipv6=0: %w", p.HostVeth, err)
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(p.Address6), Scope: netlink.SCOPE_LINK}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("add route to %s via %s: %w", p.Address6, p.HostVeth, err)
		}
	}
	routes, err := h.RouteList(l, netlink.FAMILY_V6)
	if err != nil {
		return fmt.Errorf("list IPv6 routes of %s: %w", p.HostVeth, err)
	}
	for _, old := range routes {
		if old.Dst == nil || old.Protocol == unix.RTPROT_KERNEL || old.Dst.IP.IsLinkLocalUnicast() || old.Dst.IP.IsMulticast() {
			continue
		}
		if !p.Address6.IsValid() || old.Dst.String() != p.Address6.String() {
			if err := h.RouteDel(&old); err != nil {
				return fmt.Errorf("remove stale route to %s via %s: %w", old.Dst, p.HostVeth, err)
			}
		}
	}
	return nil
}

// setupPodSide configures the pod's end, through the pod's netlink socket:
// MTU, up, the address as /32 (and no other IPv4 address), the gateway
// on-link with a permanent neighbour entry to the host end, and the default
// route.
func (p podNet) setupPodSide(h netlinksafe.Handle, l netlink.Link, hostMAC net.HardwareAddr) error {
	if err := setMTUUp(h, l, p.MTU); err != nil {
		return err
	}
	addrs, err := addrList(h, l)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", p.IfName, err)
	}
	for _, a := range addrs {
		if a.IPNet.String() != p.Address.String() {
			if err := h.AddrDel(l, &a); err != nil {
				return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, p.IfName, err)
			}
		}
	}
	if p.Address.IsValid() {
		if err := p.setupPodSide4(h, l, hostMAC); err != nil {
			return err
		}
	}
	if p.Address6.IsValid() {
		return p.setupPodSide6(h, l, hostMAC)
	}
	return nil
}

// setupPodSide4 gives the pod its IPv4 address, the gateway on-link with
// a permanent neighbour entry, and the IPv4 default route.
func (p podNet) setupPodSide4(h netlinksafe.Handle, l netlink.Link, hostMAC net.HardwareAddr) error {
	if err := h.AddrReplace(l, &netlink.Addr{IPNet: ipNet(p.Address)}); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p.Address, p.IfName, err)
	}
	gw := net.IP(p.Gateway.AsSlice())
	idx := l.Attrs().Index
	onLink := &netlink.Route{LinkIndex: idx, Dst: ipNet(netip.PrefixFrom(p.Gateway, 32)), Scope: netlink.SCOPE_LINK}
	if err := h.RouteReplace(onLink); err != nil {
		return fmt.Errorf("add on-link route to gateway %s on %s: %w", p.Gateway, p.IfName, err)
	}
	// Proxy ARP on the host end answers for the gateway when the node has
	// a route to it; the permanent entry makes the pod independent of the
	// node's routing table and saves the first ARP round trip.
	neigh := &netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}
	if err := h.NeighSet(neigh); err != nil {
		return fmt.Errorf("add neighbour %s on %s: %w", p.Gateway, p.IfName, err)
	}
	def := &netlink.Route{LinkIndex: idx, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: gw}
	if err := h.RouteReplace(def); err != nil {
		return fmt.Errorf("add default route via %s on %s: %w", p.Gateway, p.IfName, err)
	}
	return nil
}

// setupPodSide6 gives the pod its IPv6 address (a /128, without duplicate
// address detection: the ring made it the pod's alone), a permanent
// neighbour entry of the link-local gateway to the host end's MAC, and the
// IPv6 default route through it.
func (p podNet) setupPodSide6(h netlinksafe.Handle, l netlink.Link, hostMAC net.HardwareAddr) error {
	addrs, err := addrListFamily(h, l, netlink.FAMILY_V6)
	if err != nil {
		return fmt.Errorf("list IPv6 addresses of %s: %w", p.IfName, err)
	}
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() && a.IPNet.String() != p.Address6.String() {
			if err := h.AddrDel(l, &a); err != nil {
				return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, p.IfName, err)
			}
		}
	}
	if err := h.AddrReplace(l, &netlink.Addr{IPNet: ipNet(p.Address6), Flags: unix.IFA_F_NODAD}); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p.Address6, p.IfName, err)
	}
	idx := l.Attrs().Index
	gw := net.IP(p.Gateway6.AsSlice())
	neigh := &netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}
	if err := h.NeighSet(neigh); err != nil {
		return fmt.Errorf("add neighbour %s on %s: %w", p.Gateway6, p.IfName, err)
	}
	def := &netlink.Route{LinkIndex: idx, Dst: ipNet(netip.MustParsePrefix("::/0")), Gw: gw}
	if err := h.RouteReplace(def); err != nil {
		return fmt.Errorf("add IPv6 default route via %s on %s: %w", p.Gateway6, p.IfName, err)
	}
	return nil
}

// addrList lists l's IPv4 addresses, asking again when the kernel says the
// dump was interrupted by a change (as netlinksafe does for the calls it
// wraps).
func addrList(h netlinksafe.Handle, l netlink.Link) ([]netlink.Addr, error) {
	return addrListFamily(h, l, netlink.FAMILY_V4)
}

// addrListFamily is addrList for one address family.
func addrListFamily(h netlinksafe.Handle, l netlink.Link, family int) ([]netlink.Addr, error) {
	for range 4 {
		addrs, err := h.AddrList(l, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return addrs, err
		}
	}
	return nil, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, netlink.ErrDumpInterrupted)
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
	for _, kv := range hostSysctls {
		name := fmt.Sprintf("net/ipv4/conf/%s/%s", p.HostVeth, kv[0])
		if v, err := sysctl.Sysctl(name); err != nil || strings.TrimSpace(v) != kv[1] {
			diffs = append(diffs, fmt.Sprintf("%s is %q, want %s", strings.ReplaceAll(name, "/", "."), v, kv[1]))
		}
	}
	if !p.Address.IsValid() {
		return diffs // IPv6 only
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
	if !p.Address.IsValid() {
		return append(diffs, p.checkPodSide6(l)...) // IPv6 only
	}
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
	if p.Address6.IsValid() {
		diffs = append(diffs, p.checkPodSide6(l)...)
	}
	return diffs
}

// checkPodSide6 is checkPodSide for the IPv6 address and default route.
func (p podNet) checkPodSide6(l netlink.Link) []string {
	var diffs []string
	name := l.Attrs().Name
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return []string{fmt.Sprintf("cannot list IPv6 addresses of %s: %v", name, err)}
	}
	found := false
	for _, a := range addrs {
		switch {
		case a.IPNet.String() == p.Address6.String():
			found = true
		case !a.IP.IsLinkLocalUnicast():
			diffs = append(diffs, fmt.Sprintf("%s has address %s that weft did not give it", name, a.IPNet))
		}
	}
	if !found {
		diffs = append(diffs, fmt.Sprintf("%s lacks its address %s", name, p.Address6))
	}
	routes, err := netlinksafe.RouteList(l, netlink.FAMILY_V6)
	if err != nil {
		return append(diffs, fmt.Sprintf("cannot list IPv6 routes of %s: %v", name, err))
	}
	var defRoutes []netlink.Route
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "::/0" {
			defRoutes = append(defRoutes, r)
		}
	}
	if !hasRoute(defRoutes, l.Attrs().Index, net.IP(p.Gateway6.AsSlice())) {
		diffs = append(diffs, fmt.Sprintf("pod IPv6 default route via %s on %s is missing", p.Gateway6, name))
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

func setMTUUp(h netlinksafe.Handle, l netlink.Link, mtu int) error {
	if mtu != 0 && l.Attrs().MTU != mtu {
		if err := h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set MTU %d on %s: %w", mtu, l.Attrs().Name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
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
	return linkFound(name, func() (netlink.Link, error) { return netlinksafe.LinkByName(name) })
}

// linkIn returns the link called name in h's netns, or nil.
func linkIn(h netlinksafe.Handle, name string) (netlink.Link, error) {
	return linkFound(name, func() (netlink.Link, error) { return h.LinkByName(name) })
}

func linkFound(name string, lookup func() (netlink.Link, error)) (netlink.Link, error) {
	l, err := lookup()
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up interface %s: %w", name, err)
	}
	return l, nil
}

// deleteLink removes the link called name in the current netns; gone
// already is fine.
func deleteLink(name string) error {
	l, err := linkIfExists(name)
	if err != nil || l == nil {
		return err
	}
	err = netlink.LinkDel(l)
	if err == nil || errors.Is(err, unix.ENODEV) || errors.Is(err, os.ErrNotExist) {
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
