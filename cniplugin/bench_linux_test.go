package cniplugin

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/cniplugin/cniplugintest"
)

// BenchmarkAddDel measures ADD and DEL latency through libcni, serial and
// 20 at once, for weft-cni against the fake daemon and, side by side, for
// the reference bridge + host-local plugins of the distribution (in
// /usr/lib/cni, skipped when absent). Each iteration is one ADD and one DEL
// of a fresh container ID; the metrics are the percentiles in ms.
//
//	sudo go test -run '^$' -bench AddDel -benchtime 200x ./cniplugin/
func BenchmarkAddDel(b *testing.B) {
	needRoot(b)
	plugins := []struct {
		name     string
		conflist func(n *node, b *testing.B) *libcni.NetworkConfigList
	}{
		{"weft", func(n *node, b *testing.B) *libcni.NetworkConfigList { return n.conflist(b, "1.0.0", "") }},
		{"bridge+host-local", func(n *node, b *testing.B) *libcni.NetworkConfigList {
			for _, p := range []string{"bridge", "host-local"} {
				if _, err := os.Stat("/usr/lib/cni/" + p); err != nil {
					b.Skip("no /usr/lib/cni/" + p)
				}
			}
			s := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench-bridge","plugins":[{"type":"bridge","bridge":"cnibr0","isGateway":true,
				"ipam":{"type":"host-local","subnet":"10.88.0.0/16","dataDir":%q}}]}`, b.TempDir())
			l, err := libcni.ConfListFromBytes([]byte(s))
			if err != nil {
				b.Fatal(err)
			}
			return l
		}},
	}
	for _, p := range plugins {
		for _, par := range []int{1, 20} {
			b.Run(fmt.Sprintf("%s/parallel=%d", p.name, par), func(b *testing.B) {
				n := newNode(b, cniplugintest.Config{})
				list := p.conflist(n, b)
				pods := make([]ns.NetNS, par)
				for i := range pods {
					pods[i] = newNetns(b)
				}
				var (
					next     atomic.Int64
					mu       sync.Mutex
					adds     []time.Duration
					dels     []time.Duration
					firstErr error
				)
				var wg sync.WaitGroup
				b.ResetTimer()
				for w := range par {
					wg.Go(func() {
						for {
							i := next.Add(1)
							if i > int64(b.N) {
								return
							}
							id := fmt.Sprintf("bench-%d", i)
							t0 := time.Now()
							_, err := n.add(list, id, pods[w])
							t1 := time.Now()
							if err == nil {
								err = n.del(list, id, pods[w])
							}
							t2 := time.Now()
							mu.Lock()
							if err != nil && firstErr == nil {
								firstErr = err
							}
							adds = append(adds, t1.Sub(t0))
							dels = append(dels, t2.Sub(t1))
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				if firstErr != nil {
					b.Fatal(firstErr)
				}
				b.ReportMetric(percentile(adds, 50), "add-p50-ms")
				b.ReportMetric(percentile(adds, 99), "add-p99-ms")
				b.ReportMetric(percentile(dels, 50), "del-p50-ms")
				b.ReportMetric(percentile(dels, 99), "del-p99-ms")
			})
		}
	}
}

// percentile is the p-th percentile of ds in milliseconds.
func percentile(ds []time.Duration, p int) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := min(len(s)*p/100, len(s)-1)
	return float64(s[i]) / float64(time.Millisecond)
}
