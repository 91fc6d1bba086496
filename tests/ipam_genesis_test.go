package tests

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// A node seeded with another genesis (another seed list) meets the mesh:
// the rings never merge, both sides say so in status, the odd node serves
// no address, and no tunnel routes its overlapping range.
func TestIPAMDifferentGenesisRefused(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 2)
	odd, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := odd.StartDaemon(seedArgs(nodes[0], []*netlab.Node{odd})...); err != nil {
		t.Fatal(err)
	}
	if err := odd.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	poll(t, ctx, func() error {
		for _, n := range []*netlab.Node{nodes[0], odd} {
			st, err := ipamStatus(ctx, n)
			if err != nil {
				return err
			}
			if st.RefusedGenesis == "" {
				return fmt.Errorf("%s does not say it refused a ring of another genesis", n.Name)
			}
		}
		return nil
	})
	for _, n := range []*netlab.Node{nodes[0], nodes[1], odd} {
		st, err := ipamStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: ready=%v refused=%q ring=%s", n.Name, st.Ready, st.RefusedGenesis, ringOf(st))
		if n != odd && ringOf(st)[odd.Name] != nil {
			t.Errorf("%s's ring has the odd node as an owner: %s", n.Name, ringOf(st))
		}
	}
	if !strings.Contains(odd.Log(), "genesis") {
		t.Errorf("the odd node's log does not mention the other genesis")
	}
	if a, err := allocate(ctx, odd, "odd-pod"); err == nil {
		t.Errorf("the node of another genesis handed out %s", a)
	} else {
		t.Logf("the odd node refuses to allocate: %v", err)
	}
	// No tunnel of the mesh carries the odd node's (overlapping) range.
	for _, n := range nodes {
		st, err := peersStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := peerOf(st, odd.Name); ok {
			for _, a := range p.AllowedIPs {
				pfx, err := netip.ParsePrefix(a)
				if err == nil && pfx.Overlaps(podCIDR) {
					t.Errorf("%s routes %s to the node of another genesis", n.Name, a)
				}
			}
		}
	}
	// The mesh's own allocations go on.
	if _, err := allocateMany(ctx, nodes[1], "mesh", 10, 2); err != nil {
		t.Errorf("allocate on %s with the odd node around: %v", nodes[1].Name, err)
	}
}
