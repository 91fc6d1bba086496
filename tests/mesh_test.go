package tests

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/netlab"
)

// newLab builds a lab for an end-to-end test of the real weft binary.
func newLab(t testing.TB) *netlab.Lab {
	t.Helper()
	if weftBinary == "" {
		if weftBinaryErr != nil {
			t.Fatalf("no weft binary: %v", weftBinaryErr)
		}
		t.Skip("needs root: runs weft daemons in network namespaces")
	}
	return netlab.NewForTest(t, netlab.Config{WeftBinary: weftBinary})
}

// seedArgs are the daemon flags of a plain mesh: seeds at node1, the ring
// seeded by every node's name, and a short reap time for tests.
func seedArgs(seed *netlab.Node, nodes []*netlab.Node, extra ...string) []string {
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	args := []string{"--peers", seed.Addr.String(), "--ipalloc-init", "seed=" + strings.Join(names, ","),
		"--wg-mode", "userspace", "--metrics-addr", "", "--log-level", "debug"}
	return append(args, extra...)
}

func startAll(t testing.TB, ctx context.Context, nodes []*netlab.Node, args func(*netlab.Node) []string) {
	t.Helper()
	for _, n := range nodes {
		if err := n.StartDaemon(args(n)...); err != nil {
			t.Fatalf("start daemon on %s: %v", n.Name, err)
		}
	}
	for _, n := range nodes {
		if err := n.WaitSocket(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func peersStatus(ctx context.Context, n *netlab.Node) (daemon.PeersStatus, error) {
	var st daemon.PeersStatus
	err := api.NewClient(n.SocketPath(), 5*time.Second).Do(ctx, http.MethodGet, api.PathStatus+"/peers", nil, &st)
	return st, err
}

// waitMesh waits until every node is ready and has every other node as a
// live peer whose tunnel address its WireGuard entry routes, and returns
// each node's tunnel address.
func waitMesh(t testing.TB, ctx context.Context, nodes []*netlab.Node) map[string]netip.Addr {
	t.Helper()
	addrs := map[string]netip.Addr{}
	poll(t, ctx, func() error {
		for _, n := range nodes {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return fmt.Errorf("%s: %w", n.Name, err)
			}
			if !st.Ready {
				return fmt.Errorf("%s not ready: %s", n.Name, st.Reason)
			}
			a, err := netip.ParseAddr(st.TunnelAddr)
			if err != nil {
				return fmt.Errorf("%s has no tunnel address", n.Name)
			}
			addrs[n.Name] = a
			alive := 0
			for _, p := range st.Peers {
				if p.State == "alive" && p.TunnelAddr != "" && routes(p.AllowedIPs, p.TunnelAddr) {
					alive++
				}
			}
			if alive != len(nodes)-1 {
				return fmt.Errorf("%s sees %d of %d peers alive", n.Name, alive, len(nodes)-1)
			}
		}
		return nil
	})
	return addrs
}

// routes reports whether one of the prefixes holds addr.
func routes(prefixes []string, addr string) bool {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	for _, s := range prefixes {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

// poll retries f until it succeeds or ctx ends.
func poll(t testing.TB, ctx context.Context, f func() error) {
	t.Helper()
	var err error
	start, logged := time.Now(), time.Now()
	for {
		if err = f(); err == nil {
			return
		}
		// A long wait says what it waits for now and then: the last error
		// alone hides what held it up before.
		if time.Since(logged) >= 15*time.Second {
			logged = time.Now()
			t.Logf("still waiting after %v: %v", time.Since(start).Round(time.Second), err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// pingAll checks that every node reaches every other node's tunnel address.
func pingAll(t testing.TB, ctx context.Context, nodes []*netlab.Node, addrs map[string]netip.Addr) {
	t.Helper()
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			poll(t, ctx, func() error {
				_, err := a.Ping(ctx, addrs[b.Name])
				if err != nil {
					return fmt.Errorf("%s -> %s (%s): %w", a.Name, b.Name, addrs[b.Name], err)
				}
				return nil
			})
		}
	}
}

func TestMeshFullMesh(t *testing.T) {
	for _, size := range []int{3, 10} {
		t.Run(fmt.Sprintf("%d-nodes", size), func(t *testing.T) {
			lab := newLab(t)
			nodes, err := lab.AddNodes(0, size)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			start := time.Now()
			startAll(t, ctx, nodes, func(n *netlab.Node) []string { return seedArgs(nodes[0], nodes) })
			addrs := waitMesh(t, ctx, nodes)
			meshed := time.Since(start)
			pingAll(t, ctx, nodes, addrs)
			t.Logf("%d nodes: full mesh after %v, every pair pinging after %v", size, meshed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		})
	}
}
