package netlab

import (
	"context"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// pingSize reports whether an echo of size bytes with DF set gets from a to
// b and back.
func pingSize(t *testing.T, a, b *Node, size int) bool {
	t.Helper()
	_, err := PingSize(context.Background(), a.Netns, b.Addr, size, 500*time.Millisecond)
	return err == nil
}

func TestLimitPath(t *testing.T) {
	lab := NewForTest(t, Config{})
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	site, err := lab.AddSite(false)
	if err != nil {
		t.Fatal(err)
	}
	far, err := lab.AddNode(site)
	if err != nil {
		t.Fatal(err)
	}
	n1, n2 := nodes[0], nodes[1]
	for _, pair := range [][2]*Node{{n1, n2}, {n1, far}} {
		a, b := pair[0], pair[1]
		t.Run(a.Name+"-"+b.Name, func(t *testing.T) {
			if !pingSize(t, a, b, 1500) {
				t.Fatalf("1500 bytes do not pass %s-%s before the limit", a.Name, b.Name)
			}
			if err := lab.LimitPath(a, b, 1280); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				from, to *Node
				size     int
				want     bool
			}{
				{a, b, 1280, true},
				{a, b, 1281, false},
				{b, a, 1281, false},
				{b, a, 1000, true},
			} {
				if got := pingSize(t, c.from, c.to, c.size); got != c.want {
					t.Errorf("%d bytes %s->%s under a 1280 limit: passed %v, want %v", c.size, c.from.Name, c.to.Name, got, c.want)
				}
			}
			// The other paths of a keep their full size.
			for _, o := range []*Node{n1, n2, far} {
				if o != a && o != b && !pingSize(t, a, o, 1500) {
					t.Errorf("1500 bytes %s->%s do not pass, but only %s-%s is limited", a.Name, o.Name, a.Name, b.Name)
				}
			}
			if err := lab.LimitPath(a, b, 0); err != nil {
				t.Fatal(err)
			}
			if !pingSize(t, a, b, 1500) {
				t.Errorf("1500 bytes do not pass %s-%s after the limit was lifted", a.Name, b.Name)
			}
		})
	}
}

func TestSetLinkMTU(t *testing.T) {
	lab := NewForTest(t, Config{})
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	n1, n2 := nodes[0], nodes[1]
	if err := lab.SetLinkMTU(n2, 1280); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, name string
	}{{n2.Netns, "eth0"}, {lab.Underlay, n2.Port()}} {
		err := withHandle(c.path, func(h *netlink.Handle) error {
			link, err := h.LinkByName(c.name)
			if err != nil {
				return err
			}
			if mtu := link.Attrs().MTU; mtu != 1280 {
				t.Errorf("MTU of %s is %d, want 1280", c.name, mtu)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if !pingSize(t, n1, n2, 1280) {
		t.Error("1280 bytes do not reach a node whose link MTU is 1280")
	}
	if pingSize(t, n1, n2, 1400) {
		t.Error("1400 bytes with DF reach a node whose link MTU is 1280")
	}
}

func TestSetLoss(t *testing.T) {
	lab := NewForTest(t, Config{})
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	n1, n2 := nodes[0], nodes[1]
	count := func(pings int) int {
		ok := 0
		for range pings {
			if _, err := PingSize(context.Background(), n1.Netns, n2.Addr, 100, 200*time.Millisecond); err == nil {
				ok++
			}
		}
		return ok
	}
	if err := lab.SetLoss(n2, 100); err != nil {
		t.Fatal(err)
	}
	if got := count(5); got != 0 {
		t.Errorf("%d of 5 pings passed a link with 100%% loss", got)
	}
	// 50% each way: a round trip passes a quarter of the time; 40 pings
	// all passing or all failing is less likely than 1 in 10^4.
	if err := lab.SetLoss(n2, 50); err != nil {
		t.Fatal(err)
	}
	if got := count(40); got == 0 || got == 40 {
		t.Errorf("%d of 40 pings passed a link with 50%% loss each way, want some but not all", got)
	}
	if err := lab.SetLoss(n2, 0); err != nil {
		t.Fatal(err)
	}
	if got := count(5); got != 5 {
		t.Errorf("%d of 5 pings passed after the loss was lifted, want 5", got)
	}
}
