package tests

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// TestRelayOneNodeCutFromMost: in a mesh of 25 nodes, one node loses its
// underlay path to 22 others and keeps two. Every one of the 22 pairs is
// relayed through one of the two, both ends name the same relay in `weft
// status peers`, pods on either end of each pair ping each other, and the
// pairs spread over both relays (rendezvous hashing, not the first node by
// name).
func TestRelayOneNodeCutFromMost(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	const size = 25
	start := time.Now()
	// Lean: 25 userspace daemons share two cores; info logs only.
	nodes, _ := meshOf(t, ctx, lab, size, "--log-level", "info")
	t.Logf("%d nodes meshed after %v", size, time.Since(start).Round(time.Second))

	x := nodes[size/2] // a middle name: the lower end of some pairs, the higher of others
	keep := []*netlab.Node{nodes[0], nodes[size-1]}
	var cut []*netlab.Node
	for _, n := range nodes {
		if n != x && !slices.Contains(keep, n) {
			cut = append(cut, n)
		}
	}
	pods := addPods(t, ctx, append([]*netlab.Node{x}, cut...), 1)
	podOf := map[string]*netlab.Pod{}
	for _, p := range pods {
		podOf[p.Node.Name] = p
	}
	for _, n := range cut {
		if err := lab.Cut(x, n); err != nil {
			t.Fatal(err)
		}
	}
	cutAt := time.Now()
	t.Logf("cut %s from %d nodes; it keeps %s and %s", x.Name, len(cut), keep[0].Name, keep[1].Name)

	// Both ends of every cut pair report the same relay.
	vias := map[string]string{}
	poll(t, ctx, func() error {
		st, err := peersStatus(ctx, x)
		if err != nil {
			return err
		}
		for _, n := range cut {
			p, ok := peerOf(st, n.Name)
			if !ok || p.Path != "relayed" {
				return fmt.Errorf("%s reaches %s %s (%d of %d relayed both ways so far)", x.Name, n.Name, p.Path, len(vias), len(cut))
			}
			if vias[n.Name] == p.Via {
				continue
			}
			other, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			q, _ := peerOf(other, x.Name)
			if q.Path != "relayed" || q.Via != p.Via {
				delete(vias, n.Name)
				return fmt.Errorf("%s relays %s via %q, %s relays %s %s via %q", x.Name, n.Name, p.Via, n.Name, x.Name, q.Path, q.Via)
			}
			vias[n.Name] = p.Via
		}
		return nil
	})
	t.Logf("all %d pairs relayed, both ends agreeing, %v after the cut", len(cut), time.Since(cutAt).Round(time.Millisecond))

	spread := map[string]int{}
	for _, n := range cut {
		via := vias[n.Name]
		if via != keep[0].Name && via != keep[1].Name {
			t.Errorf("%s-%s relayed via %s, which cannot reach %s", x.Name, n.Name, via, x.Name)
		}
		spread[via]++
	}
	t.Logf("relays: %v", spread)
	if len(spread) < 2 {
		t.Errorf("every pair goes through one relay: %v; want them spread", spread)
	}

	// Pods on both ends of every relayed pair reach each other.
	px := podOf[x.Name]
	for _, n := range cut {
		pn := podOf[n.Name]
		poll(t, ctx, func() error {
			if _, err := px.Ping(ctx, pn.IP()); err != nil {
				return fmt.Errorf("ping %s -> %s via %s: %w", px.Name, pn.Name, vias[n.Name], err)
			}
			if _, err := pn.Ping(ctx, px.IP()); err != nil {
				return fmt.Errorf("ping %s -> %s via %s: %w", pn.Name, px.Name, vias[n.Name], err)
			}
			return nil
		})
	}
	// The two relays reach x and everyone directly.
	for _, k := range keep {
		if p, err := pathOf(ctx, x, k); err != nil || p != "direct" {
			t.Errorf("%s reaches the relay %s %s (%v), want direct", x.Name, k.Name, p, err)
		}
	}
	// And still agree, pair by pair, after all that traffic.
	st, err := peersStatus(ctx, x)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range cut {
		other, err := peersStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := peerOf(st, n.Name)
		q, _ := peerOf(other, x.Name)
		if p.Path != "relayed" || q.Path != "relayed" || p.Via != q.Via {
			t.Errorf("%s reaches %s %s via %q, %s reaches %s %s via %q", x.Name, n.Name, p.Path, p.Via, n.Name, x.Name, q.Path, q.Via)
		}
	}
}
