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
