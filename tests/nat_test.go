package tests

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/netlab"
)

// TestNATPunching: two sites behind cone NATs of their own and one behind a
// symmetric NAT, no port forwards, two nodes each, and two public nodes.
// Every node learns its NAT from where its peers see it; nodes behind the
// two cone NATs punch to each other's public endpoints and talk directly;
// pairs with a node behind the symmetric NAT stay relayed; status shows the
// NAT kinds and the share of direct peers.
func TestNATPunching(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	public, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	kinds := []string{"cone", "cone", "symmetric"}
	var sites []int
	var behind [][]*netlab.Node
	for _, k := range kinds {
		s, err := lab.AddNATSite(netlab.NATConfig{Symmetric: k == "symmetric"})
		if err != nil {
			t.Fatal(err)
		}
		ns, err := lab.AddNodes(s, 2)
		if err != nil {
			t.Fatal(err)
		}
		sites = append(sites, s)
		behind = append(behind, ns)
	}
	nodes := append([]*netlab.Node{}, public...)
	want := map[string]string{} // NAT kind by node
	siteOf := map[string]int{}  // index into behind; -1 public
	for _, n := range public {
		want[n.Name], siteOf[n.Name] = "none", -1
	}
	for i, ns := range behind {
		for _, n := range ns {
			want[n.Name], siteOf[n.Name] = kinds[i], i
		}
		nodes = append(nodes, ns...)
	}
	start := time.Now()
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return seedArgs(nodes[0], nodes) })
	// Not waitMesh: relayed pairs route each other's tunnel address
	// through the relay's entry, not their own.
	addrs := map[string]netip.Addr{}
	poll(t, ctx, func() error {
		for _, n := range nodes {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			a, err := netip.ParseAddr(st.TunnelAddr)
			if !st.Ready || err != nil {
				return fmt.Errorf("%s not ready: %s", n.Name, st.Reason)
			}
			addrs[n.Name] = a
			if st.LivePeers != len(nodes)-1 {
				return fmt.Errorf("%s sees %d of %d peers alive", n.Name, st.LivePeers, len(nodes)-1)
			}
		}
		return nil
	})
	t.Logf("mesh of %d nodes up after %v", len(nodes), time.Since(start).Round(time.Millisecond))

	// wantPath is how a reaches b once everything is learnt: directly,
	// unless both are behind NAT, on different sites, one of them
	// symmetric.
	wantDirect := func(a, b *netlab.Node) bool {
		sa, sb := siteOf[a.Name], siteOf[b.Name]
		if sa < 0 || sb < 0 || sa == sb {
			return true
		}
		return kinds[sa] == "cone" && kinds[sb] == "cone"
	}
	var last map[string]daemon.PeersStatus
	check := func() error {
		last = map[string]daemon.PeersStatus{}
		for _, n := range nodes {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			last[n.Name] = st
			if st.NATKind != want[n.Name] {
				return fmt.Errorf("%s says its NAT is %q, want %q", n.Name, st.NATKind, want[n.Name])
			}
			if s := siteOf[n.Name]; s >= 0 && kinds[s] == "cone" {
				host := n.Addr.As4()[3]
				refl := netip.AddrPortFrom(lab.PublicAddr(sites[s]), uint16(netlab.ConeBasePort+int(host)))
				if st.Reflexive != refl.String() {
					return fmt.Errorf("%s says its public endpoint is %q, want %s", n.Name, st.Reflexive, refl)
				}
			}
			direct := 0
			for _, peer := range nodes {
				if peer == n {
					continue
				}
				p, ok := peerOf(st, peer.Name)
				if !ok {
					return fmt.Errorf("%s has no peer %s", n.Name, peer.Name)
				}
				if p.NATKind != want[peer.Name] {
					return fmt.Errorf("%s says %s's NAT is %q, want %q", n.Name, peer.Name, p.NATKind, want[peer.Name])
				}
				if got := p.Path == "direct"; got != wantDirect(n, peer) {
					return fmt.Errorf("%s reaches %s %s %s (direct path %s), want direct=%v", n.Name, peer.Name, p.Path, p.Via, p.DirectPath, !got)
				}
				if p.Path == "direct" {
					direct++
				}
			}
			share := float64(direct) / float64(len(nodes)-1)
			if st.LivePeers != len(nodes)-1 || st.DirectPeers != direct || math.Abs(st.DirectShare-share) > 1e-9 {
				return fmt.Errorf("%s reports %d of %d live peers direct (%.3f), want %d of %d", n.Name,
					st.DirectPeers, st.LivePeers, st.DirectShare, direct, len(nodes)-1)
			}
		}
		return nil
	}
	poll(t, ctx, check)
	t.Logf("cone pairs punched, symmetric pairs relayed, %v after the start", time.Since(start).Round(time.Millisecond))
	for _, n := range nodes {
		st := last[n.Name]
		t.Logf("%s: NAT %s %s, %d of %d peers direct (%.0f%%)", n.Name, st.NATKind, st.Reflexive, st.DirectPeers, st.LivePeers, 100*st.DirectShare)
	}
	// It stays so: the symmetric pairs do not flap to direct and back.
	for range 10 {
		if err := check(); err != nil {
			t.Fatalf("after settling: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Gossip reaches the nodes behind NAT through the tunnel, so their
	// peers hardly ever declare them dead (shown, not asserted: a busy
	// machine may still delay an answer).
	failed := map[string]int{}
	for _, n := range nodes {
		for _, peer := range nodes {
			if c := strings.Count(n.Log(), "Marking "+peer.Name+" as failed"); c > 0 {
				failed[peer.Name] += c
			}
		}
	}
	t.Logf("declared dead by a peer since the start, by node: %v", failed)
	// Traffic flows on every kind of pair: punched, relayed, siblings.
	a1, a2, b1, c1 := behind[0][0], behind[0][1], behind[1][0], behind[2][0]
	for _, pair := range [][2]*netlab.Node{{a1, b1}, {b1, a1}, {a1, c1}, {c1, b1}, {a1, a2}, {c1, public[0]}} {
		if _, err := pair[0].Ping(ctx, addrs[pair[1].Name]); err != nil {
			t.Errorf("ping %s -> %s: %v", pair[0].Name, pair[1].Name, err)
		}
	}
	p, _ := peerOf(last[a1.Name], b1.Name)
	if p.Endpoint != last[b1.Name].Reflexive {
		t.Errorf("%s talks to %s at %s, want its public endpoint %s", a1.Name, b1.Name, p.Endpoint, last[b1.Name].Reflexive)
	}
	out, _ := a1.Exec(ctx, weftBinary, "status", "peers", "--run-dir", a1.RunDir())
	t.Logf("weft status peers on %s:\n%s", a1.Name, out)
}
