package ipalloc_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weftnet/weft/ipalloc"
	"github.com/weftnet/weft/ipalloc/ipalloctest"
)

type holder struct {
	node string
	key  ipalloc.Key
}

// TestRandomCluster runs random allocations, releases, gossip in random
// order, partitions, node deaths, reclaims and stale restarts on a cluster
// of in-process allocators, and checks that no address is ever handed out
// while another pod holds it, and that every ring converges once the
// partitions heal.
func TestRandomCluster(t *testing.T) {
	seeds := 6
	if testing.Short() {
		seeds = 2
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { randomCluster(t, seed, 300) })
	}
}

func randomCluster(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 3))
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.0.0.0/24")
	if seed%2 == 1 {
		cidr = netip.MustParsePrefix("10.0.0.0/26") // tight: donations and a full range
	}
	names := []string{"n1", "n2", "n3", "n4", "n5"}
	genesis := names[:3]
	for _, name := range names {
		n.Add(t, ipalloc.Config{Self: name, CIDR: cidr, Seed: genesis})
	}
	inUse := map[netip.Addr]holder{}
	stats := map[string]int{}
	keys := map[string][]ipalloc.Key{}
	stopped := ""
	partitioned := false
	next := 0
	pick := func() string { return n.Nodes()[rng.IntN(len(n.Nodes()))] }

	allocate := func(step int, node string, k ipalloc.Key) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		addr, err := n.Alloc(node).Allocate(ctx, k, nil)
		if err != nil {
			if !errors.Is(err, ipalloc.ErrNoSpace) && !errors.Is(err, ipalloc.ErrFull) {
				t.Fatalf("step %d: allocate on %s: %v", step, node, err)
			}
			stats["refused"]++
			return
		}
		if h, ok := inUse[addr]; ok && h != (holder{node, k}) {
			t.Fatalf("step %d: %s gave %s to %v, but %s holds it for %v", step, node, addr, k, h.node, h.key)
		}
		for a, h := range inUse {
			if h == (holder{node, k}) && a != addr {
				delete(inUse, a) // the old address was dropped (lost range)
			}
		}
		inUse[addr] = holder{node, k}
		stats["allocations"]++
		if !slices.Contains(keys[node], k) {
			keys[node] = append(keys[node], k)
		}
	}

	for step := range steps {
		switch op := rng.IntN(100); {
		case op < 40:
			node := pick()
			next++
			allocate(step, node, ipalloc.Key{ContainerID: fmt.Sprint("c", next), IfName: "eth0"})
		case op < 45: // ADD again for an existing key
			node := pick()
			if ks := keys[node]; len(ks) > 0 {
				allocate(step, node, ks[rng.IntN(len(ks))])
			}
		case op < 60:
			node := pick()
			ks := keys[node]
			if len(ks) == 0 {
				continue
			}
			i := rng.IntN(len(ks))
			addr, ok, err := n.Alloc(node).Release(context.Background(), ks[i])
			if err != nil {
				t.Fatal(err)
			}
			if ok && inUse[addr] == (holder{node, ks[i]}) {
				delete(inUse, addr)
			}
			keys[node] = slices.Delete(ks, i, i+1)
		case op < 80: // one ring reaches one peer
			n.GossipPair(pick(), pick())
		case op < 84:
			nodes := n.Nodes()
			rng.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
			cut := 1 + rng.IntN(len(nodes)-1)
			n.Partition(nodes[:cut], nodes[cut:])
			partitioned = true
		case op < 90:
			n.Heal()
			partitioned = false
		case op < 93: // a node dies
			if stopped == "" && len(n.Nodes()) > 2 {
				stopped = pick()
				n.Stop(stopped)
			}
		case op < 96: // someone reclaims it: its pods died with it
			if stopped != "" && !partitioned {
				claimant := n.Alloc(pick())
				if claimant.Status(nil).Genesis == "" {
					continue // has not heard the ring yet: refuses
				}
				if _, err := claimant.Rmpeer(context.Background(), stopped); err != nil {
					t.Fatalf("step %d: rmpeer %s: %v", step, stopped, err)
				}
				stats["reclaims"]++
				for a, h := range inUse {
					if h.node == stopped {
						delete(inUse, a)
					}
				}
			}
		default: // it comes back with its old disk
			if stopped != "" {
				stats["restarts"]++
				n.Restart(t, stopped)
				stopped = ""
			}
		}
	}
	t.Logf("%v, %d addresses in use at the end", stats, len(inUse))
	n.Heal()
	for range 3 {
		if err := n.Gossip(); err != nil {
			t.Fatal(err)
		}
	}
	var want map[string][]netip.Prefix
	for _, node := range n.Nodes() {
		got := n.Alloc(node).Ranges()
		if want == nil {
			want = got
		} else if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s did not converge: %v vs %v", node, got, want)
		}
	}
	for addr, h := range inUse {
		if n.Alloc(h.node) == nil {
			continue
		}
		owned := false
		for _, p := range want[h.node] {
			owned = owned || p.Contains(addr)
		}
		if !owned {
			t.Errorf("%s holds %s for %v outside its ranges %v", h.node, addr, h.key, want[h.node])
		}
	}
}
