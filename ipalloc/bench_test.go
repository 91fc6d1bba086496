package ipalloc_test

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkAllocate: addresses handed out per second, each one written and
// fsynced to the state file before it is returned.
func BenchmarkAllocate(b *testing.B) {
	a := openB(b)
	defer a.Close()
	const batch = 200
	next := 0
	b.ResetTimer()
	for range b.N {
		for range batch {
			next++
			if _, err := a.Allocate(ctx, key(next), map[string]string{"pod": fmt.Sprint("p", next)}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "allocs/s")
}

// BenchmarkAllocateBurst: 20 ADDs at once, as when 20 pods start on a
// node; reports the slowest of each burst (every address written and
// fsynced before its Allocate returns).
func BenchmarkAllocateBurst(b *testing.B) {
	a := openB(b)
	defer a.Close()
	const burst = 20
	next := 0
	var worst time.Duration
	b.ResetTimer()
	for range b.N {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for range burst {
			next++
			k := key(next)
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				if _, err := a.Allocate(ctx, k, nil); err != nil {
					b.Error(err)
				}
				mu.Lock()
				worst = max(worst, time.Since(start))
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	b.ReportMetric(float64(worst.Microseconds())/1000, "ms-slowest")
}
