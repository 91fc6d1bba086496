package mesh

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// TestDetourKeepsNATtedMember: three nodes cannot send to the gossip
// address of a fourth (behind NAT), which can send to them. Without a
// detour they declare it dead again and again, however often it refutes;
// with its gossip detoured to another address of it (weft: its tunnel
// address), nobody ever does, and its probes and push/pulls take the
// detour.
func TestDetourKeepsNATtedMember(t *testing.T) {
	for _, detour := range []bool{false, true} {
		name := "underlay only"
		if detour {
			name = "detour"
		}
		t.Run(name, func(t *testing.T) {
			var natted atomic.Value
			detourAddr := netip.MustParseAddr("127.0.0.2")
			cfg := func(name string, i int, seeds ...string) Config {
				c := testConfig(t, name, seeds...)
				if name != "nat" {
					// What they send to the node behind NAT's gossip
					// address is dropped, as a NAT with no port forward
					// does; its own messages out get through.
					c.wrapTransport = func(tr memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
						return &cutTransport{NodeAwareTransport: tr, drop: func(_, to string) bool {
							a, _ := natted.Load().(string)
							return a != "" && to == a
						}}
					}
				}
				if detour {
					c.Detour = func(peer string) (netip.Addr, bool) { return detourAddr, peer == "nat" }
				}
				return c
			}
			a := startNode(t, cfg("a", 0))
			b := startNode(t, cfg("b", 1, a.addr()))
			c := startNode(t, cfg("c", 2, a.addr()))
			nat := startNode(t, cfg("nat", 3, a.addr()))
			waitFullMesh(t, converge, a, b, c, nat)
			if detour {
				for i, n := range []*node{a, b, c} {
					if err := n.ListenDetour(netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i)})); err != nil {
						t.Fatal(err)
					}
				}
				if err := nat.ListenDetour(detourAddr); err != nil {
					t.Fatal(err)
				}
			}
			natted.Store(nat.addr())

			// 25 probe intervals; a suspicion times out after 3 of them.
			time.Sleep(5 * time.Second)
			leaves := 0
			for _, n := range []*node{a, b, c} {
				for _, ev := range n.eventsFor("nat") {
					if ev.Type == EventLeave {
						leaves++
					}
				}
			}
			t.Logf("the others saw the node behind NAT leave %d times in 5 s", leaves)
			if detour && leaves > 0 {
				t.Errorf("with the detour, the node behind NAT was declared dead %d times", leaves)
			}
			if !detour && leaves == 0 {
				t.Error("without the detour, the node behind NAT was never declared dead: the test cuts nothing")
			}
			if detour {
				// Probes came round as packets, push/pulls as streams. A
				// push/pull goes every 2 s to a random member, so whether
				// one picked the hidden node within 5 s is chance: wait.
				waitFor(t, converge, "packets and streams through the detour", func() bool {
					return nat.detour.received.Load() > 0 && nat.detour.accepted.Load() > 0
				})
				t.Logf("through the detour: %d packets, %d streams", nat.detour.received.Load(), nat.detour.accepted.Load())
			}
		})
	}
}
