package mesh

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkConvergence starts n members on loopback, all seeded at member
// 0 at once, and measures the time until every member lists every other
// one. Gossip, push/pull and join timings are the defaults; probing is
// relaxed (see below). Run it with -benchtime 1x:
//
//	go test ./mesh -run '^$' -bench Convergence -benchtime 1x
func BenchmarkConvergence(b *testing.B) {
	for _, n := range []int{10, 50, 100, 250} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			var total time.Duration
			for range b.N {
				total += convergeOnce(b, n)
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/full-membership")
		})
	}
}

func convergeOnce(b *testing.B, n int) time.Duration {
	b.StopTimer()
	meshes := make([]*Mesh, n)
	for i := range meshes {
		c := DefaultConfig()
		c.NodeName = fmt.Sprintf("m%03d", i)
		c.BindAddr = "127.0.0.1"
		c.BindPort = 0
		c.Key = testGossipKey
		// n members in one process share a few cores: with LAN probe
		// timings a starved process suspects healthy members and the
		// membership flaps. Probe like memberlist's WAN profile; gossip
		// and push/pull, which drive convergence, keep their defaults.
		c.ProbeInterval = 5 * time.Second
		c.ProbeTimeout = 3 * time.Second
		c.SuspicionMult = 6
		if i > 0 {
			c.Seeds = []string{meshes[0].local.String()}
		}
		m, err := New(c)
		if err != nil {
			b.Fatal(err)
		}
		meshes[i] = m
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	b.StartTimer()
	start := time.Now()
	for _, m := range meshes {
		wg.Go(func() {
			go func() {
				for range m.Events() {
				}
			}()
			if err := m.Run(ctx); err != nil {
				b.Error(err)
			}
		})
	}
	deadline := start.Add(2 * time.Minute)
	for {
		lo, hi := n, 0
		for _, m := range meshes {
			k := m.Health().Members
			lo, hi = min(lo, k), max(hi, k)
		}
		if lo == n-1 && hi == n-1 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d members did not converge in 2 minutes: members seen per node between %d and %d", n, lo, hi)
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start)
	b.StopTimer()
	return took
}

// BenchmarkFailureDetection measures, with the default timings, how long
// after a member stops answering (shut down without leaving, like kill -9)
// every other member has declared it dead. Compare with
// Config.FailureDetectionTime.
func BenchmarkFailureDetection(b *testing.B) {
	const n = 5
	var total time.Duration
	for range b.N {
		b.StopTimer()
		nodes := make([]*node, n)
		for i := range nodes {
			c := DefaultConfig()
			c.NodeName = fmt.Sprintf("m%d", i)
			c.BindAddr = "127.0.0.1"
			c.BindPort = 0
			c.Key = testGossipKey
			if i > 0 {
				c.Seeds = []string{nodes[0].addr()}
			}
			nodes[i] = startNode(b, c)
		}
		waitFullMesh(b, time.Minute, nodes...)
		b.StartTimer()
		start := time.Now()
		victim := nodes[n-1]
		_ = victim.Close()
		for _, o := range nodes[:n-1] {
			waitFor(b, time.Minute, "death of "+victim.cfg.NodeName, func() bool {
				ev, ok := o.lastEvent(victim.cfg.NodeName)
				return ok && ev.Type == EventLeave && ev.Peer.State == StateDead
			})
		}
		total += time.Since(start)
		b.StopTimer()
		for _, o := range nodes {
			o.stop(b)
		}
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/declared-dead")
	b.ReportMetric(DefaultConfig().FailureDetectionTime(n).Seconds(), "s/documented")
}
