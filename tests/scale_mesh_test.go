package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// scaleNodesEnv sets the size of TestMeshScale: 20 daemons by default (the
// CI run, about two minutes), WEFT_SCALE_NODES=50 for the large run.
const scaleNodesEnv = "WEFT_SCALE_NODES"

// scaleIdle is how long idle CPU and underlay traffic are measured.
const scaleIdle = 10 * time.Second

// scalePodNodes is how many nodes get a pod for the sampled pod pings.
const scalePodNodes = 6

// Above scaleLeanAbove daemons, the 2 cores of the test machine (shared
// with other work) starve the daemons enough that 1 s probes raise false
// alarms: members suspected and declared dead, direct paths judged down
// and relayed. The daemons then probe every scaleLeanProbe instead.
const (
	scaleLeanAbove = 20
	scaleLeanProbe = 3 * time.Second
)

func scaleNodes(t *testing.T) int {
	t.Helper()
	s := os.Getenv(scaleNodesEnv)
	if s == "" {
		return 20
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 3 {
		t.Fatalf("%s=%q: want a number of nodes, at least 3", scaleNodesEnv, s)
	}
	return n
}

// TestMeshScale brings up N real daemons (userspace WireGuard, one network
// namespace each, all seeded at node1 and started at once), waits until
// every daemon's peer table holds every other node with a routed tunnel
// address, pings between pods on a sample of nodes, measures each idle
// daemon's RSS, CPU and underlay traffic, then times a node joining (not
// in the genesis: it needs a donation) and a node killed with SIGKILL, and
// stops every daemon with SIGTERM. Daemons run with --log-level info and
// no metrics listener, and above scaleLeanAbove daemons with a longer
// --probe-interval.
func TestMeshScale(t *testing.T) {
	n := scaleNodes(t)
	lab := newLab(t)
	roomForNeighbours(t, n+1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(3+n/5)*time.Minute)
	defer cancel()
	all, err := lab.AddNodes(0, n+1)
	if err != nil {
		t.Fatal(err)
	}
	nodes, joiner := all[:n], all[n]
	lean := []string{"--log-level", "info"}
	if n > scaleLeanAbove {
		lean = append(lean, "--probe-interval", scaleLeanProbe.String())
	}
	t.Logf("%d daemons with %v", n, lean)
	args := func(*netlab.Node) []string { return seedArgs(nodes[0], nodes, lean...) }

	start := time.Now()
	startAll(t, ctx, nodes, args)
	sockets := time.Since(start)
	addrs := waitMesh(t, ctx, nodes)
	meshed := time.Since(start)
	t.Logf("%d daemons: sockets up after %v, every peer table complete after %v", n, sockets.Round(time.Millisecond), meshed.Round(time.Millisecond))

	pingSample(t, ctx, nodes)

	// Idle: nothing changes in the cluster while this is measured.
	idle := measureIdle(t, ctx, nodes, scaleIdle)
	t.Logf("idle over %v: RSS per daemon median %.1f MiB (max %.1f), CPU per daemon median %.2f%% of a core (max %.2f%%), underlay traffic per node median %.0f B/s (max %.0f) sent+received",
		scaleIdle, idle.rss.median()/(1<<20), idle.rss.max()/(1<<20), 100*idle.cpu.median(), 100*idle.cpu.max(), idle.bytes.median(), idle.bytes.max())
	if m := idle.rss.max(); m > 300<<20 {
		t.Errorf("a daemon holds %.0f MiB resident with %d peers; want at most 300 MiB", m/(1<<20), n-1)
	}
	if c := idle.cpu.median(); c > 0.10 {
		t.Errorf("an idle daemon uses %.1f%% of a core (median) with %d peers; want at most 10%%", 100*c, n-1)
	}

	// A node not in the genesis joins: it needs a donation of addresses
	// before it has a tunnel address, and every peer table must list it.
	start = time.Now()
	if err := joiner.StartDaemon(args(joiner)...); err != nil {
		t.Fatal(err)
	}
	if err := joiner.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	grown := append(slices.Clone(nodes), joiner)
	addrs = waitMesh(t, ctx, grown)
	t.Logf("join at %d nodes: every peer table (the new node's included) complete %v after its daemon started", n+1, time.Since(start).Round(time.Millisecond))
	poll(t, ctx, func() error {
		_, err := joiner.Ping(ctx, addrs[nodes[n/2].Name])
		return err
	})

	// A node is killed: every other daemon must see it down.
	victim := nodes[n-1]
	start = time.Now()
	if err := victim.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	rest := slices.DeleteFunc(slices.Clone(grown), func(x *netlab.Node) bool { return x == victim })
	poll(t, ctx, func() error {
		for _, o := range rest {
			st, err := peersStatus(ctx, o)
			if err != nil {
				return fmt.Errorf("%s: %w", o.Name, err)
			}
			p, ok := peerOf(st, victim.Name)
			if ok && p.State == "alive" {
				return fmt.Errorf("%s still sees %s alive", o.Name, victim.Name)
			}
		}
		return nil
	})
	t.Logf("kill at %d nodes: every other daemon sees %s down %v after SIGKILL", n+1, victim.Name, time.Since(start).Round(time.Millisecond))

	// Tear down: every daemon leaves and exits on SIGTERM.
	start = time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(rest))
	for _, o := range rest {
		wg.Go(func() {
			t0 := time.Now()
			if err := o.StopDaemon(); err != nil {
				errs <- fmt.Errorf("stop daemon on %s: %w", o.Name, err)
			} else if d := time.Since(t0); d >= 9*time.Second {
				// StopDaemon sends SIGKILL after 10 s.
				errs <- fmt.Errorf("the daemon on %s took %v to stop on SIGTERM (killed?)\n%s", o.Name, d.Round(time.Millisecond), o.LogTail(20))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, o := range rest {
		if o.DaemonRunning() {
			t.Errorf("daemon on %s still runs after StopDaemon", o.Name)
		}
	}
	t.Logf("%d daemons stopped with SIGTERM in %v", len(rest), time.Since(start).Round(time.Millisecond))
}

// pingSample puts a pod on scalePodNodes nodes spread over the cluster and
// pings between every pair of them, both ways.
func pingSample(t *testing.T, ctx context.Context, nodes []*netlab.Node) {
	t.Helper()
	k := min(scalePodNodes, len(nodes))
	var sample []*netlab.Node
	for i := range k {
		sample = append(sample, nodes[i*len(nodes)/k])
	}
	pods := addPods(t, ctx, sample, 1)
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			poll(t, ctx, func() error {
				if _, err := a.Ping(ctx, b.IP()); err != nil {
					return fmt.Errorf("pod %s -> pod %s (%s): %w", a.Name, b.Name, b.IP(), err)
				}
				return nil
			})
		}
	}
	t.Logf("pods on %d nodes: all %d ordered pairs ping", len(pods), len(pods)*(len(pods)-1))
}

// samples is one figure per daemon.
type samples []float64

func (s samples) median() float64 {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	return c[len(c)/2]
}

func (s samples) max() float64 {
	if len(s) == 0 {
		return 0
	}
	return slices.Max(s)
}

type idleFigures struct {
	rss   samples // bytes, at the end
	cpu   samples // share of one core over the window
	bytes samples // underlay bytes per second, sent and received
}

// measureIdle reads every daemon's CPU time and its namespace's underlay
// counters (/proc/PID/net/dev, which shows the daemon's network
// namespace) before and after window, and its RSS after.
func measureIdle(t *testing.T, ctx context.Context, nodes []*netlab.Node, window time.Duration) idleFigures {
	t.Helper()
	type reading struct {
		cpu   float64
		bytes uint64
	}
	read := func() []reading {
		out := make([]reading, len(nodes))
		for i, nd := range nodes {
			pid := nd.DaemonPID()
			c, err := processCPU(pid)
			if err != nil {
				t.Fatalf("%s: %v", nd.Name, err)
			}
			b, err := netdevBytes(pid)
			if err != nil {
				t.Fatalf("%s: %v", nd.Name, err)
			}
			out[i] = reading{c, b}
		}
		return out
	}
	before, t0 := read(), time.Now()
	select {
	case <-ctx.Done():
		t.Fatal("no time left to measure the idle daemons")
	case <-time.After(window):
	}
	after, secs := read(), time.Since(t0).Seconds()
	var f idleFigures
	for i, nd := range nodes {
		rss, err := processRSS(nd.DaemonPID())
		if err != nil {
			t.Fatalf("%s: %v", nd.Name, err)
		}
		f.rss = append(f.rss, float64(rss))
		f.cpu = append(f.cpu, (after[i].cpu-before[i].cpu)/secs)
		f.bytes = append(f.bytes, float64(after[i].bytes-before[i].bytes)/secs)
	}
	return f
}

// processCPU is the user and system CPU time of a process, in seconds.
func processCPU(pid int) (float64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces): utime and
	// stime are the 12th and 13th.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	var total float64
	for _, v := range f[11:13] {
		ticks, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		total += float64(ticks) / clockTicks
	}
	return total, nil
}

// netdevBytes is the bytes received and sent on eth0, the node's link to
// the underlay, in the process's network namespace: gossip, WireGuard
// keepalives and the tunnelled path probes together.
func netdevBytes(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		return 0, err
	}
	var total uint64
	for line := range strings.Lines(string(b)) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if strings.TrimSpace(name) != "eth0" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 9 {
			return 0, fmt.Errorf("/proc/%d/net/dev: short line %q", pid, line)
		}
		for _, v := range []string{f[0], f[8]} {
			x, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/net/dev: %w", pid, err)
			}
			total += x
		}
	}
	return total, nil
}

// neighThresh are the kernel's limits on the ARP table, which all network
// namespaces share: past gc_thresh3 entries (1024 by default) a new
// neighbour fails with ENOBUFS ("neighbor table overflow" in the kernel
// log) and a node cannot reach its peers, which a lab of 50 nodes, each
// with an entry for every other, exceeds.
var neighThresh = []string{
	"/proc/sys/net/ipv4/neigh/default/gc_thresh2",
	"/proc/sys/net/ipv4/neigh/default/gc_thresh3",
}

// roomForNeighbours raises the ARP table limits to hold a full mesh of
// nodes (each node an entry for every other, twice over for pods and
// other labs) and puts them back when the test ends.
func roomForNeighbours(t *testing.T, nodes int) {
	t.Helper()
	want := []int{2 * nodes * nodes, 4 * nodes * nodes}
	for i, path := range neighThresh {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read the ARP table limit: %v", err)
		}
		old, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if old >= want[i] {
			continue
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(want[i])), 0o644); err != nil {
			t.Fatalf("raise %s to %d for %d nodes: %v", path, want[i], nodes, err)
		}
		now, _ := os.ReadFile(path)
		t.Logf("%s raised from %d to %s for %d nodes", path, old, strings.TrimSpace(string(now)), nodes)
		t.Cleanup(func() {
			if err := os.WriteFile(path, []byte(strconv.Itoa(old)), 0o644); err != nil {
				t.Errorf("restore %s to %d: %v", path, old, err)
			}
		})
	}
}
