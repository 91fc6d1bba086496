package ipalloc_test

import (
	"fmt"
	"testing"
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
