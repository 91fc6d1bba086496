package daemon

import (
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestSyncRoutesDualStackInNetns: the kernel takes both families' routes
// and guards, and a second sync finds nothing to change.
func TestSyncRoutesDualStackInNetns(t *testing.T) {
	inThrowawayNetns(t, func(n ns.NetNS, h *netlink.Handle) error {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "weft"}, PeerName: "weftpeer"}); err != nil {
			return err
		}
		link, _ := h.LinkByName("weft")
		if err := h.LinkSetUp(link); err != nil {
			return err
		}
		self, self6 := netip.MustParseAddr("10.32.0.1"), netip.MustParseAddr("fd10:32::1")
		for _, a := range []netip.Addr{self, self6} {
			na := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}, Flags: unix.IFA_F_NODAD}
			if err := h.AddrAdd(link, na); err != nil {
				return err
			}
		}
		want := desiredRoutesFamilies(pfx("10.32.0.0/16", "fd10:32::/48"), []netip.Addr{self, self6},
			map[string][]netip.Prefix{"node2": pfx("10.32.64.0/18", "fd10:32::4000/114")})
		if err := syncRoutes(h, link.Attrs().Index, want); err != nil {
			t.Fatalf("sync: %v", err)
		}
		got := listWeftRoutes(t, h)
		if renderRoutes(got) != renderRoutes(want) {
			t.Errorf("routes after sync:\n%swant:\n%s", renderRoutes(got), renderRoutes(want))
		}
		// Ownership moves in both families at once.
		want = desiredRoutesFamilies(pfx("10.32.0.0/16", "fd10:32::/48"), []netip.Addr{self, self6},
			map[string][]netip.Prefix{"node2": pfx("10.32.64.0/18", "10.32.128.0/17", "fd10:32::4000/114", "fd10:32::8000/113")})
		if err := syncRoutes(h, link.Attrs().Index, want); err != nil {
			t.Fatalf("second sync: %v", err)
		}
		if got := listWeftRoutes(t, h); renderRoutes(got) != renderRoutes(want) {
			t.Errorf("routes after second sync:\n%swant:\n%s", renderRoutes(got), renderRoutes(want))
		}
		if err := syncRoutes(h, link.Attrs().Index, nil); err != nil {
			t.Fatalf("sync to nothing: %v", err)
		}
		if got := listWeftRoutes(t, h); len(got) != 0 {
			t.Errorf("routes left after sync to nothing: %v", got)
		}
		return nil
	})
}

// TestMasqueradeDualStackInNetns: one masquerade rule per family, kept as
// is on a second sync.
func TestMasqueradeDualStackInNetns(t *testing.T) {
	n := throwawayNetns(t)
	err := n.Do(func(ns.NetNS) error {
		pods := pfx("10.32.0.0/16", "fd10:32::/48")
		if err := syncMasquerade(pods...); err != nil {
			t.Fatalf("sync: %v", err)
		}
		conn, err := nftables.New()
		if err != nil {
			return err
		}
		tb := weftTable()
		c := &nftables.Chain{Name: nftMasqChain, Table: tb}
		rules, err := conn.GetRules(tb, c)
		if err != nil || len(rules) != 2 || string(rules[1].UserData) != string(masqTag(pods[1])) {
			t.Fatalf("rules after sync: %d rules, %v", len(rules), err)
		}
		handles := []uint64{rules[0].Handle, rules[1].Handle}
		if err := syncMasquerade(pods...); err != nil {
			t.Fatalf("second sync: %v", err)
		}
		rules, _ = conn.GetRules(tb, c)
		if len(rules) != 2 || rules[0].Handle != handles[0] || rules[1].Handle != handles[1] {
			t.Errorf("an unchanged rule set was rewritten")
		}
		return removeNftables()
	})
	if err != nil {
		t.Fatal(err)
	}
}
