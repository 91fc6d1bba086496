package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// TestPathProberInNetns runs two probers in a throwaway netns, each on its
// own probe address: they judge each other's path up, measure an RTT, tell
// each other where they are seen; when one goes silent the other judges
// the path down within 4 s, and up again within 2 s when it answers again.
func TestPathProberInNetns(t *testing.T) {
	n := throwawayNetns(t)
	addrA, addrB := netip.MustParseAddr("10.32.0.2"), netip.MustParseAddr("10.32.0.66")
	err := n.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		for _, a := range []netip.Addr{addrA, addrB} {
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	pa := newPathProber(defaultLivenessConfig(), log, nil)
	pb := newPathProber(defaultLivenessConfig(), log, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, p := range []*pathProber{pa, pb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Do keeps Run on a thread in the netns, where it binds.
			n.Do(func(ns.NetNS) error { return p.Run(ctx) })
		}()
	}
	defer func() { cancel(); wg.Wait() }()
	pa.Set(addrA, map[string]netip.Addr{"b": addrB}, map[netip.Addr]string{addrB: "192.0.2.2:10066"})
	pb.Set(addrB, map[string]netip.Addr{"a": addrA}, map[netip.Addr]string{addrA: "192.0.2.1:10002"})

	waitState := func(p *pathProber, peer string, want pathState, limit time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			if r := p.Results()[peer]; r.State == want {
				return time.Since(start)
			}
			if time.Since(start) > limit {
				t.Fatalf("path to %s not %s within %v: %+v", peer, want, limit, p.Results()[peer])
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitState(pa, "b", pathUp, 5*time.Second)
	waitState(pb, "a", pathUp, 5*time.Second)
	// On loopback the RTT is well under a millisecond; 20 ms leaves room
	// for a busy machine, not for the loop's 50 ms tick. (The probes sent
	// before the other side bound its socket were lost.)
	if r := pa.Results()["b"]; r.RTT <= 0 || r.RTT > 20*time.Millisecond {
		t.Errorf("healthy path: RTT %v, want one under 20ms", r.RTT)
	}
	if got := pa.Observed()["b"]; got != netip.MustParseAddrPort("192.0.2.1:10002") {
		t.Errorf("b tells a it is seen at %v, want 192.0.2.1:10002", got)
	}
	if got := pb.Observed()["a"]; got != netip.MustParseAddrPort("192.0.2.2:10066") {
		t.Errorf("a tells b it is seen at %v, want 192.0.2.2:10066", got)
	}

	// b goes silent: it has no probe address any more.
	pb.Set(netip.Addr{}, nil, nil)
	if d := waitState(pa, "b", pathDown, 10*time.Second); d > 4*time.Second {
		t.Errorf("silence judged after %v, want within 4 s", d)
	}
	pb.Set(addrB, map[string]netip.Addr{"a": addrA}, map[netip.Addr]string{addrA: "192.0.2.1:10002"})
	if d := waitState(pa, "b", pathUp, 10*time.Second); d > 2*time.Second {
		t.Errorf("answers judged up after %v, want within 2 s", d)
	}
}
