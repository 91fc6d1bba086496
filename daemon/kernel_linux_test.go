package daemon

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// throwawayNetns gives a test a new network namespace, removed at the end.
func throwawayNetns(t *testing.T) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

// inThrowawayNetns runs fn in a new network namespace with a netlink
// handle of it, and fails the test with fn's error.
func inThrowawayNetns(t *testing.T, fn func(n ns.NetNS, h *netlink.Handle) error) {
	t.Helper()
	n := throwawayNetns(t)
	err := n.Do(func(ns.NetNS) error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		return fn(n, h)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSyncRoutesInNetns(t *testing.T) {
	inThrowawayNetns(t, func(n ns.NetNS, h *netlink.Handle) error {
		// No dummy driver on every kernel: a veth stands in for the tunnel device.
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "weft"}, PeerName: "weftpeer"}); err != nil {
			return err
		}
		link, _ := h.LinkByName("weft")
		if err := h.LinkSetUp(link); err != nil {
			return err
		}
		self := netip.MustParseAddr("10.32.0.1")
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: self.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return err
		}
		// A route someone else owns inside the pod range must survive.
		foreign := &netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK,
			Dst: &net.IPNet{IP: net.IPv4(10, 32, 0, 9).To4(), Mask: net.CIDRMask(32, 32)}}
		if err := h.RouteAdd(foreign); err != nil {
			return err
		}
		pod := netip.MustParsePrefix("10.32.0.0/12")
		want := desiredRoutes(pod, self, map[string][]netip.Prefix{"node2": pfx("10.32.64.0/18"), "node3": pfx("10.32.128.0/17")})
		if err := syncRoutes(h, link.Attrs().Index, want); err != nil {
			t.Fatalf("sync: %v", err)
		}
		got := listWeftRoutes(t, h)
		if renderRoutes(got) != renderRoutes(want) {
			t.Errorf("routes after sync:\n%swant:\n%s", renderRoutes(got), renderRoutes(want))
		}
		// Ownership moves: node3 is gone, node2 grows.
		want = desiredRoutes(pod, self, map[string][]netip.Prefix{"node2": pfx("10.32.64.0/18", "10.32.128.0/17")})
		if err := syncRoutes(h, link.Attrs().Index, want); err != nil {
			t.Fatalf("second sync: %v", err)
		}
		if got := listWeftRoutes(t, h); renderRoutes(got) != renderRoutes(want) {
			t.Errorf("routes after second sync:\n%swant:\n%s", renderRoutes(got), renderRoutes(want))
		}
		all, _ := h.RouteList(nil, netlink.FAMILY_V4)
		kept := false
		for _, r := range all {
			if r.Dst != nil && r.Dst.String() == "10.32.0.9/32" {
				kept = true
			}
		}
		if !kept {
			t.Error("a route weft does not own was removed")
		}
		// A reattached device's routes let its peers back at once.
		if ok, err := hasRoutes(h, link.Attrs().Index); err != nil || !ok {
			t.Errorf("hasRoutes with weft's routes in place: %v, %v; want true", ok, err)
		}
		if err := syncRoutes(h, link.Attrs().Index, nil); err != nil {
			t.Fatalf("sync to nothing: %v", err)
		}
		if got := listWeftRoutes(t, h); len(got) != 0 {
			t.Errorf("routes left after sync to nothing: %v", got)
		}
		if ok, err := hasRoutes(h, link.Attrs().Index); err != nil || ok {
			t.Errorf("hasRoutes with no weft route: %v, %v; want false", ok, err)
		}
		return nil
	})
}

// listWeftRoutes lists the routes weft owns, of both families.
func listWeftRoutes(t *testing.T, h *netlink.Handle) []route {
	t.Helper()
	rs, err := weftRoutes(h)
	if err != nil {
		t.Fatal(err)
	}
	var out []route
	for _, nr := range rs {
		if r, ok := routeFromNetlink(nr); ok {
			out = append(out, r)
		}
	}
	sortRoutes(out)
	return out
}

func TestMasqueradeInNetns(t *testing.T) {
	n := throwawayNetns(t)
	err := n.Do(func(ns.NetNS) error {
		pod := netip.MustParsePrefix("10.32.0.0/12")
		if err := syncMasquerade(pod); err != nil {
			t.Fatalf("sync: %v", err)
		}
		conn, err := nftables.New()
		if err != nil {
			return err
		}
		t1 := weftTable()
		c := &nftables.Chain{Name: nftMasqChain, Table: t1}
		rules, err := conn.GetRules(t1, c)
		if err != nil || len(rules) != 1 {
			t.Fatalf("rules after sync: %v, %v", rules, err)
		}
		handle := rules[0].Handle
		if err := syncMasquerade(pod); err != nil {
			t.Fatalf("second sync: %v", err)
		}
		rules, _ = conn.GetRules(t1, c)
		if len(rules) != 1 || rules[0].Handle != handle {
			t.Errorf("an unchanged rule set was rewritten (handle %d -> %v)", handle, rules)
		}
		other := netip.MustParsePrefix("10.96.0.0/16")
		if err := syncMasquerade(other); err != nil {
			t.Fatalf("sync other range: %v", err)
		}
		rules, _ = conn.GetRules(t1, c)
		if len(rules) != 1 || string(rules[0].UserData) != string(masqTag(other)) {
			t.Errorf("rules after range change: %v", rules)
		}
		if err := removeNftables(); err != nil {
			t.Fatalf("remove: %v", err)
		}
		if _, err := conn.ListTableOfFamily(nftTable, nftables.TableFamilyINet); err == nil {
			t.Error("table still there after removal")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
