package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/ipalloc/ring"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/mesh/meshtest"
)

// scaleCIDR is the pod range of the scale simulations (the default one).
var scaleCIDR = netip.MustParsePrefix("10.32.0.0/12")

var scaleGossipKey = []byte("weft-scale-simulation-gossip-key")

// scaleMember is one simulated node: a real mesh and the peer table its
// daemon would program, computed by the daemon's own code.
type scaleMember struct {
	name string
	key  wgtypes.Key
	mesh *mesh.Mesh
	// agent holds only what the peer computation reads: the reconcile
	// loop's known peers, the pod range and a logger.
	agent *agent
	done  bool // the peer table is complete
}

// scaleCluster is n members, all seeded at member 0, with the address ring
// every node computes from the same seed list (--ipalloc-init seed=...).
type scaleCluster struct {
	members []*scaleMember
	ranges  map[string][]netip.Prefix // every owner's ranges, from the ring
	keys    map[wgtypes.Key]string    // public key → name
	settle  time.Duration             // wait after the shutdown (synctest)
	trace   func(last *scaleMember)   // called when a run is slow
}

// newScaleCluster creates n meshes; transport(i) gives member i its
// transport (nil: UDP and TCP on loopback) and address.
func newScaleCluster(tb testing.TB, n int, cfgFn func(i int, c *mesh.Config)) *scaleCluster {
	tb.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("node-%04d", i)
	}
	r, err := ring.NewGenesis(scaleCIDR, names)
	if err != nil {
		tb.Fatal(err)
	}
	c := &scaleCluster{ranges: r.CIDRsByOwner(), keys: map[wgtypes.Key]string{}}
	for i, name := range names {
		priv, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			tb.Fatal(err)
		}
		pub := priv.PublicKey()
		c.keys[pub] = name
		cfg := mesh.DefaultConfig()
		cfg.NodeName = name
		cfg.Key = scaleGossipKey
		cfg.Meta = mesh.Meta{
			PublicKey:  pub,
			Endpoint:   fmt.Sprintf("10.%d.%d.%d:6784", 1+i/65536, i/256%256, i%256),
			TunnelAddr: c.ranges[name][0].Addr().Next(),
		}
		cfgFn(i, &cfg)
		if i > 0 {
			cfg.Seeds = []string{c.members[0].mesh.Local().Addr.String()}
		}
		m, err := mesh.New(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		a := &agent{cfg: Config{PodCIDR: scaleCIDR, ReapTime: 5 * time.Minute}, log: slog.New(slog.DiscardHandler), peers: map[string]*knownPeer{}}
		c.members = append(c.members, &scaleMember{name: name, key: pub, mesh: m, agent: a})
	}
	return c
}

// peerTable is what member m's daemon would configure on its WireGuard
// device from scratch: the peer configs of refreshPeers, view and
// diffPeers against an empty device.
func (c *scaleCluster) peerTable(m *scaleMember) []wgtypes.PeerConfig {
	m.agent.foldPeers(m.mesh.Members(), c.ranges, time.Now())
	v, _ := m.agent.view()
	return diffPeers(nil, v, endpointMemory{})
}

// complete says what is missing from member m's peer table, "" if nothing:
// a config for every other member with its key, endpoint, and its whole
// range and tunnel address as allowed IPs.
func (c *scaleCluster) complete(m *scaleMember) string {
	cfgs := c.peerTable(m)
	if len(cfgs) != len(c.members)-1 {
		return fmt.Sprintf("%s has %d of %d peers", m.name, len(cfgs), len(c.members)-1)
	}
	for _, pc := range cfgs {
		name, ok := c.keys[pc.PublicKey]
		if !ok || name == m.name {
			return fmt.Sprintf("%s has a peer with key %s", m.name, pc.PublicKey)
		}
		if pc.Endpoint == nil {
			return fmt.Sprintf("%s has no endpoint for %s", m.name, name)
		}
		got := ipNetsToPrefixes(pc.AllowedIPs)
		if want := c.ranges[name]; !slices.Equal(got, normalize(want)) {
			return fmt.Sprintf("%s allows %v for %s, want %v", m.name, got, name, want)
		}
	}
	return ""
}

// run starts every member at once and returns how long until every
// member's peer table was complete. Polls cost little: a member's table is
// computed only once its mesh lists every other member.
func (c *scaleCluster) run(tb testing.TB, limit time.Duration) time.Duration {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		// memberlist's last probes and timers end on their own after
		// its shutdown; a synctest bubble must outlive them.
		time.Sleep(c.settle)
	}()
	start := time.Now()
	for _, m := range c.members {
		wg.Go(func() {
			if err := m.mesh.Run(ctx); err != nil {
				tb.Error(err)
			}
		})
		wg.Go(func() {
			for range m.mesh.Events() {
			}
		})
	}
	n := len(c.members)
	var last *scaleMember
	for {
		left, why := 0, ""
		for _, m := range c.members {
			if m.done {
				continue
			}
			if m.mesh.Health().Members == n-1 {
				if why = c.complete(m); why == "" {
					m.done = true
					last = m
					continue
				}
			}
			left++
		}
		if left == 0 {
			took := time.Since(start)
			if c.trace != nil && took > 2*time.Second {
				c.trace(last)
			}
			return took
		}
		if time.Since(start) > limit {
			lo, hi := n, 0
			for _, m := range c.members {
				k := m.mesh.Health().Members
				lo, hi = min(lo, k), max(hi, k)
			}
			tb.Fatalf("%d members: %d peer tables incomplete after %v (members seen per node %d to %d; %s)", n, left, limit, lo, hi, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// simEnv selects the sizes of TestConvergenceSimulated: unset, 10 and 100
// members; "all", the whole curve 10/50/100/250/1000, three rounds each;
// or a comma-separated list of sizes.
const simEnv = "WEFT_SCALE_SIM"

// TestConvergenceSimulated starts n real meshes (memberlist, weft's
// delegates, gossip encryption) on an in-memory network inside a
// testing/synctest bubble, all seeded at member 0 at once, and measures in
// virtual time how long until every member's peer table, computed by the
// daemon's code from its members and the ring, is complete. Virtual time
// passes only while every goroutine waits, so the figure is the protocol's
// latency as if each node had its own CPU, whatever the load here.
func TestConvergenceSimulated(t *testing.T) {
	sizes, rounds := []int{10, 100}, 1
	switch s := os.Getenv(simEnv); s {
	case "":
	case "all":
		sizes, rounds = []int{10, 50, 100, 250, 1000}, 3
	default:
		sizes = nil
		for f := range strings.SplitSeq(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n < 2 {
				t.Fatalf("%s=%q: want \"all\" or sizes like 250,1000", simEnv, s)
			}
			sizes = append(sizes, n)
		}
		rounds = 3
	}
	for _, n := range sizes {
		t.Run(fmt.Sprintf("members=%d", n), func(t *testing.T) {
			var took []time.Duration
			for range rounds {
				synctest.Test(t, func(t *testing.T) {
					took = append(took, simulateOnce(t, n))
				})
			}
			slices.Sort(took)
			median := took[len(took)/2]
			t.Logf("%d members: full mesh and full peer tables after %v (median of %d: %v)", n, median, len(took), took)
			if limit := simGoal(n); median > limit {
				t.Errorf("%d members converged in %v; want under %v", n, median, limit)
			}
		})
	}
}

// simGoal is the convergence time a cluster of n must beat: 2 s up to 250
// members, 5 s up to 1000.
func simGoal(n int) time.Duration {
	if n <= 250 {
		return 2 * time.Second
	}
	return 5 * time.Second
}

func simulateOnce(t *testing.T, n int) time.Duration {
	var simnet meshtest.SimNetwork
	trace := os.Getenv("WEFT_SCALE_TRACE") != ""
	logs := make([]*lockedBuffer, n)
	c := newScaleCluster(t, n, func(i int, cfg *mesh.Config) {
		if trace {
			logs[i] = &lockedBuffer{}
			cfg.Logger = slog.New(slog.NewTextHandler(logs[i], &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/65536), byte(i / 256 % 256), byte(i % 256)}), mesh.DefaultPort)
		tr, err := simnet.Transport(addr)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Transport = tr
	})
	c.settle = time.Minute
	if trace {
		c.trace = func(last *scaleMember) {
			for i, m := range c.members {
				if m == last || i == 0 {
					t.Logf("log of %s:\n%s", m.name, logs[i].String())
				}
			}
		}
	}
	took := c.run(t, time.Minute)
	if lost := simnet.Lost.Load(); lost > 0 {
		t.Logf("%d members: %d datagrams lost at full queues", n, lost)
	}
	return took
}

// BenchmarkConvergenceLoopback is the same on loopback sockets in real
// time: n members in this process share this machine's cores, so beyond a
// hundred members it measures the machine more than the protocol. Run it
// with -benchtime 1x.
func BenchmarkConvergenceLoopback(b *testing.B) {
	for _, n := range []int{10, 50, 100, 250} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			var total time.Duration
			for range b.N {
				c := newScaleCluster(b, n, func(_ int, cfg *mesh.Config) {
					cfg.BindAddr = "127.0.0.1"
					cfg.BindPort = 0
					// n members share a few cores: probe like
					// memberlist's WAN profile so a starved process does
					// not suspect healthy members.
					cfg.ProbeInterval = 5 * time.Second
					cfg.ProbeTimeout = 3 * time.Second
					cfg.SuspicionMult = 6
				})
				total += c.run(b, 2*time.Minute)
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/full-mesh")
		})
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// BenchmarkPeerReconcile: the daemon's peer computation on every reconcile
// of a settled cluster of n nodes: fold the members and the ring's ranges
// into the known peers (foldPeers), build the desired view and diff it
// against a device that already holds it (nothing to change), and, apart,
// what a fresh device needs (every peer). Linear in n.
func BenchmarkPeerReconcile(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("node-%04d", i)
		}
		r, err := ring.NewGenesis(scaleCIDR, names)
		if err != nil {
			b.Fatal(err)
		}
		members := make([]mesh.Peer, 0, n-1)
		for i, name := range names[1:] {
			priv, err := wgtypes.GeneratePrivateKey()
			if err != nil {
				b.Fatal(err)
			}
			members = append(members, mesh.Peer{Name: name, State: mesh.StateAlive,
				Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i / 256), byte(i)}), mesh.DefaultPort),
				Meta: mesh.Meta{Name: name, PublicKey: priv.PublicKey(),
					Endpoint:   fmt.Sprintf("10.1.%d.%d:6784", i/256, i%256),
					TunnelAddr: r.CIDRs(name)[0].Addr().Next()}})
		}
		newAgent := func() *agent {
			return &agent{cfg: Config{PodCIDR: scaleCIDR, ReapTime: 5 * time.Minute}, log: slog.New(slog.DiscardHandler), peers: map[string]*knownPeer{}}
		}
		now := time.Now()
		b.Run(fmt.Sprintf("members=%d/steady", n), func(b *testing.B) {
			a := newAgent()
			ranges := r.CIDRsByOwner()
			a.foldPeers(members, ranges, now)
			v, _ := a.view()
			var dev []wgtypes.Peer
			for _, pc := range diffPeers(nil, v, endpointMemory{}) {
				dev = append(dev, wgtypes.Peer{PublicKey: pc.PublicKey, PresharedKey: *pc.PresharedKey,
					Endpoint: pc.Endpoint, PersistentKeepaliveInterval: *pc.PersistentKeepaliveInterval, AllowedIPs: pc.AllowedIPs})
			}
			mem := endpointMemory{}
			mem.remember(diffPeers(nil, v, endpointMemory{}))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				ranges := r.CIDRsByOwner()
				a.foldPeers(members, ranges, now)
				v, _ := a.view()
				if cfgs := diffPeers(dev, v, mem); len(cfgs) != 0 {
					b.Fatalf("a settled cluster of %d needs %d peer changes", n, len(cfgs))
				}
			}
		})
		b.Run(fmt.Sprintf("members=%d/fresh", n), func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				a := newAgent()
				a.foldPeers(members, r.CIDRsByOwner(), now)
				v, _ := a.view()
				if cfgs := diffPeers(nil, v, endpointMemory{}); len(cfgs) != n-1 {
					b.Fatalf("%d peer configs, want %d", len(cfgs), n-1)
				}
			}
		})
	}
}
