package tests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/netlab"
)

// The CNI latency benchmark: ADD and DEL of weft-cni against a real weft
// daemon, and of the reference bridge + host-local plugins of the
// distribution (/usr/lib/cni), on one lab node in one run, through libcni
// inside the node as its container runtime would call them:
//
//   - serial: ADD then DEL of a fresh container ID, one at a time, the two
//     plugins taking turns (so drift of the machine's load hits both);
//   - parallel=20: what a kubelet does when 20 pods start at once: 20 ADDs
//     fired together (each timed on its own), then their 20 DELs together,
//     round after round, the plugins taking turns by round.
//
// Both plugins run alone in their config list (no portmap), in the same pod
// network namespaces. Each sub-benchmark reports p50 and p99 of ADD and DEL
// per plugin in ms, the CPU time the plugin's processes took per ADD (on a
// machine of few cores the bound of 20 at once), and weft's p99 over
// bridge's; one iteration is
// cniSerialCycles cycles or cniParallelRounds rounds per plugin, so
// -benchtime Nx takes N times as many samples. BENCHMARKS.md has the
// numbers.
//
//	sudo go test -run '^$' -bench CNIAddDel -benchtime 1x -v ./tests/

const (
	cniSerialCycles   = 200 // ADD+DEL cycles per plugin and iteration
	cniParallel       = 20  // ADDs (and DELs) fired at once
	cniParallelRounds = 10  // bursts per plugin and iteration
)

// cniBenchPlugin is one plugin under test: its config list, its name in
// the metrics.
type cniBenchPlugin struct {
	name string
	list *libcni.NetworkConfigList
}

// cniSamples are the latencies of one plugin in one shape, and the CPU
// time its processes used for them (user and system, so with the kernel's
// work for the calls they made).
type cniSamples struct {
	add, del       []time.Duration
	addCPU, delCPU time.Duration
}

func BenchmarkCNIAddDel(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: runs a weft daemon and pods in network namespaces")
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			b.Skipf("needs /usr/lib/cni/%s (apt-get install containernetworking-plugins)", p)
		}
	}
	weft := needWeft(b)
	lab := netlab.NewForTest(b, netlab.Config{WeftBinary: weft})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	nodes, err := lab.AddNodes(0, 1)
	if err != nil {
		b.Fatal(err)
	}
	n := nodes[0]
	startAll(b, ctx, nodes, func(*netlab.Node) []string {
		return []string{"--peers", n.Addr.String(), "--ipalloc-init", "seed=" + n.Name,
			"--wg-mode", "userspace", "--metrics-addr", ""}
	})
	waitMesh(b, ctx, nodes)

	plugins := []cniBenchPlugin{
		{"weft", cniList(b, `{"type":"weft-cni","socket":%q}`, n.SocketPath())},
		{"bridge", cniList(b, `{"type":"bridge","bridge":"cnibr0","isGateway":true,
			"ipam":{"type":"host-local","subnet":"10.88.0.0/16","dataDir":%q}}`, filepath.Join(n.Dir, "host-local"))},
	}
	netnses := cniBenchNetns(b, ctx, n, cniParallel)
	cni := n.CNIConfig()
	// The first ADD of each plugin makes what is made once (the bridge,
	// the daemon's first allocation on disk); it is not measured.
	for _, p := range plugins {
		if err := cniCycle(ctx, cni, p.list, netnses[0], &cniSamples{}); err != nil {
			b.Fatalf("%s: first ADD and DEL: %v", p.name, err)
		}
	}
	b.Logf("load average at start: %s", loadAverage())

	b.Run("serial", func(b *testing.B) {
		samples := make([]cniSamples, len(plugins))
		for i := range b.N * cniSerialCycles {
			for j := range plugins {
				k := (i + j) % len(plugins) // take turns going first
				if err := cniCycle(ctx, cni, plugins[k].list, netnses[0], &samples[k]); err != nil {
					b.Fatalf("%s: %v", plugins[k].name, err)
				}
			}
		}
		reportCNI(b, plugins, samples)
	})
	b.Run(fmt.Sprintf("parallel=%d", cniParallel), func(b *testing.B) {
		samples := make([]cniSamples, len(plugins))
		for r := range b.N * cniParallelRounds {
			for j := range plugins {
				k := (r + j) % len(plugins)
				if err := cniBurst(ctx, cni, plugins[k].list, netnses, &samples[k]); err != nil {
					b.Fatalf("%s, round %d: %v", plugins[k].name, r+1, err)
				}
			}
		}
		reportCNI(b, plugins, samples)
	})
	b.Logf("load average at end: %s", loadAverage())
}

// cniList is a network config list of the one plugin in conf (a format
// for fmt.Sprintf with args).
func cniList(b *testing.B, conf string, args ...any) *libcni.NetworkConfigList {
	b.Helper()
	s := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench","plugins":[`+conf+`]}`, args...)
	l, err := libcni.ConfListFromBytes([]byte(s))
	if err != nil {
		b.Fatalf("config list %s: %v", s, err)
	}
	return l
}

// cniBenchNetns makes count pod network namespaces on n, named and removed
// by the lab; each has only its loopback up, so the plugins under test add
// and delete eth0 in them again and again.
func cniBenchNetns(b *testing.B, ctx context.Context, n *netlab.Node, count int) []string {
	b.Helper()
	lo := []byte(`{"cniVersion":"1.0.0","name":"lo","plugins":[{"type":"loopback"}]}`)
	paths := make([]string, count)
	for i := range paths {
		p, err := n.AddPod(ctx, netlab.PodConfig{Name: fmt.Sprintf("bench%d", i), NetConfList: lo, IfName: "lo"})
		if err != nil {
			b.Fatal(err)
		}
		paths[i] = p.Netns
	}
	return paths
}

// cniRuntimeConf is what a runtime hands the plugins for a new sandbox in
// netns: a fresh container ID and the kubelet's CNI_ARGS.
func cniRuntimeConf(netns string) *libcni.RuntimeConf {
	id := make([]byte, 32)
	rand.Read(id)
	c := hex.EncodeToString(id)
	return &libcni.RuntimeConf{
		ContainerID: c,
		NetNS:       netns,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", "bench-" + c[:8]},
			{"K8S_POD_INFRA_CONTAINER_ID", c},
		},
	}
}

// cniCycle runs ADD and then DEL of a fresh container in netns and adds
// how long each took, and the CPU the plugins used, to s.
func cniCycle(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, netns string, s *cniSamples) error {
	rt := cniRuntimeConf(netns)
	c0, t0 := childCPU(), time.Now()
	if _, err := cni.AddNetworkList(ctx, list, rt); err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	c1, t1 := childCPU(), time.Now()
	if err := cni.DelNetworkList(ctx, list, rt); err != nil {
		return fmt.Errorf("DEL: %w", err)
	}
	s.add = append(s.add, t1.Sub(t0))
	s.del = append(s.del, time.Since(t1))
	s.addCPU += c1 - c0
	s.delCPU += childCPU() - c1
	return nil
}

// cniBurst fires one ADD per netns at once, waits for all, then fires
// their DELs at once; it adds the latency of each call, and the CPU the
// plugins used, to s.
func cniBurst(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, netnses []string, s *cniSamples) error {
	rts := make([]*libcni.RuntimeConf, len(netnses))
	for i, ns := range netnses {
		rts[i] = cniRuntimeConf(ns)
	}
	fire := func(what string, call func(*libcni.RuntimeConf) error) ([]time.Duration, time.Duration, error) {
		took := make([]time.Duration, len(rts))
		errs := make([]error, len(rts))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, rt := range rts {
			wg.Go(func() {
				<-start
				t0 := time.Now()
				if err := call(rt); err != nil {
					errs[i] = fmt.Errorf("%s of %s: %w", what, rt.NetNS, err)
				}
				took[i] = time.Since(t0)
			})
		}
		c0 := childCPU()
		close(start)
		wg.Wait()
		return took, childCPU() - c0, errors.Join(errs...)
	}
	adds, cpu, err := fire("ADD", func(rt *libcni.RuntimeConf) error {
		_, err := cni.AddNetworkList(ctx, list, rt)
		return err
	})
	if err != nil {
		return err
	}
	s.add, s.addCPU = append(s.add, adds...), s.addCPU+cpu
	dels, cpu, err := fire("DEL", func(rt *libcni.RuntimeConf) error { return cni.DelNetworkList(ctx, list, rt) })
	s.del, s.delCPU = append(s.del, dels...), s.delCPU+cpu
	return err
}

// childCPU is the CPU time (user and system) of the child processes of
// this process that have exited and been waited for: the plugins, which
// libcni waits for (the daemon is waited for only at the end).
func childCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCNI reports p50 and p99 of ADD and DEL of every plugin, and logs
// weft's p99 over the others'.
func reportCNI(b *testing.B, plugins []cniBenchPlugin, samples []cniSamples) {
	b.Helper()
	for i, p := range plugins {
		s := samples[i]
		b.ReportMetric(ms(pct(s.add, 50)), p.name+"-add-p50-ms")
		b.ReportMetric(ms(pct(s.add, 99)), p.name+"-add-p99-ms")
		b.ReportMetric(ms(pct(s.del, 50)), p.name+"-del-p50-ms")
		b.ReportMetric(ms(pct(s.del, 99)), p.name+"-del-p99-ms")
		addCPU, delCPU := ms(s.addCPU)/float64(len(s.add)), ms(s.delCPU)/float64(len(s.del))
		b.ReportMetric(addCPU, p.name+"-add-cpu-ms")
		b.Logf("%s: %d ADDs p50 %.1f ms p99 %.1f ms max %.1f ms, CPU %.1f ms each; %d DELs p50 %.1f ms p99 %.1f ms max %.1f ms, CPU %.1f ms each",
			p.name, len(s.add), ms(pct(s.add, 50)), ms(pct(s.add, 99)), ms(pct(s.add, 100)), addCPU,
			len(s.del), ms(pct(s.del, 50)), ms(pct(s.del, 99)), ms(pct(s.del, 100)), delCPU)
	}
	w := samples[0]
	for i, p := range plugins[1:] {
		o := samples[i+1]
		var line []string
		for _, c := range []struct {
			what   string
			ws, os []time.Duration
		}{{"ADD", w.add, o.add}, {"DEL", w.del, o.del}} {
			for _, q := range []int{50, 99} {
				line = append(line, fmt.Sprintf("%s p%d %.2fx", c.what, q, ms(pct(c.ws, q))/ms(pct(c.os, q))))
			}
		}
		b.ReportMetric(ms(pct(w.add, 99))/ms(pct(o.add, 99)), "add-p99-"+plugins[0].name+"/"+p.name)
		b.Logf("%s/%s: %s", plugins[0].name, p.name, strings.Join(line, ", "))
	}
}

// pct is the p-th percentile of ds (nearest rank).
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(float64(p)/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
