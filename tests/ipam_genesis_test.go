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

// A node that is not in the seed list joins a running mesh: it starts with
// no space, gets a donation on its first allocation, and meshes.
func TestIPAMNodeOutsideGenesis(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 3)
	before, err := allocateMany(ctx, nodes[0], "seeded", 20, 4)
	if err != nil {
		t.Fatal(err)
	}
	late, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := late.StartDaemon(seedArgs(nodes[0], nodes)...); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if err := late.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	all := append(append([]*netlab.Node(nil), nodes...), late)
	tunnel := waitMesh(t, ctx, all)
	t.Logf("the late node meshed %v after start with tunnel address %s", time.Since(started).Round(time.Millisecond), tunnel[late.Name])
	got, err := allocateMany(ctx, late, "late", 20, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("20 allocations on the late node in %v (%d retries while not ready)", got.took.Round(time.Millisecond), got.retries)
	final := waitRings(t, ctx, all)
	t.Logf("ring: %s", final)
	if len(final[late.Name]) == 0 {
		t.Errorf("the late node owns nothing after allocating")
	}
	distinct(t, before.addrs, got.addrs)
	for k, a := range got.addrs {
		if o := final.ownerOf(a); o != late.Name {
			t.Errorf("the late node handed out %s (%s), which the ring gives to %q", a, k, o)
		}
	}
	if o := final.ownerOf(tunnel[late.Name]); o != late.Name {
		t.Errorf("the late node's tunnel address %s is owned by %q", tunnel[late.Name], o)
	}
	pingAll(t, ctx, all, tunnel)
}
