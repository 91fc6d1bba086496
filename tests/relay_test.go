package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// TestMeshTwoSitesNATAndRelay: two sites, the second behind NAT. Every node
// reaches every other; a pair whose direct path is cut talks through a
// relay, status says so, and they go back to direct when the cut heals.
func TestMeshTwoSitesNATAndRelay(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	public, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	site, err := lab.AddSite(true)
	if err != nil {
		t.Fatal(err)
	}
	natted, err := lab.AddNodes(site, 2)
	if err != nil {
		t.Fatal(err)
	}
	nodes := append(append([]*netlab.Node{}, public...), natted...)
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return seedArgs(nodes[0], nodes) })
	addrs := waitMesh(t, ctx, nodes)
	pingAll(t, ctx, nodes, addrs)

	a, b := public[0], public[1]
	if err := lab.Cut(a, b); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	relayed := func(n, peer *netlab.Node) (string, error) {
		st, err := peersStatus(ctx, n)
		if err != nil {
			return "", err
		}
		p, ok := peerOf(st, peer.Name)
		if !ok {
			return "", fmt.Errorf("%s has no peer %s", n.Name, peer.Name)
		}
		if p.Path != "relayed" {
			return "", fmt.Errorf("%s reaches %s %s", n.Name, peer.Name, p.Path)
		}
		return p.Via, nil
	}
	var via string
	poll(t, ctx, func() error {
		v1, err := relayed(a, b)
		if err != nil {
			return err
		}
		v2, err := relayed(b, a)
		if err != nil {
			return err
		}
		if v1 != v2 {
			return fmt.Errorf("the two ends relay through different nodes: %s and %s", v1, v2)
		}
		via = v1
		return nil
	})
	t.Logf("cut %s-%s seen and relayed via %s after %v", a.Name, b.Name, via, time.Since(cut).Round(time.Millisecond))
	poll(t, ctx, func() error {
		_, err := a.Ping(ctx, addrs[b.Name])
		return err
	})
	if _, err := b.Ping(ctx, addrs[a.Name]); err != nil {
		t.Errorf("relayed path %s -> %s: %v", b.Name, a.Name, err)
	}

	if err := lab.Heal(a, b); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	poll(t, ctx, func() error {
		for _, pair := range [][2]*netlab.Node{{a, b}, {b, a}} {
			st, err := peersStatus(ctx, pair[0])
			if err != nil {
				return err
			}
			if p, _ := peerOf(st, pair[1].Name); p.Path != "direct" {
				return fmt.Errorf("%s still reaches %s %s %s", pair[0].Name, pair[1].Name, p.Path, p.Via)
			}
		}
		return nil
	})
	t.Logf("back to direct %v after the heal", time.Since(healed).Round(time.Millisecond))
	pingAll(t, ctx, nodes, addrs)
	out, _ := a.Exec(ctx, weftBinary, "status", "peers", "--run-dir", a.RunDir())
	if !strings.Contains(string(out), "direct") {
		t.Errorf("weft status peers:\n%s", out)
	}
}
