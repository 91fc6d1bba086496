package tests

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// kill -9 of the daemon during a burst of ADDs through libcni: the pods
// that started keep their addresses after the restart, new pods get other
// addresses, and once every pod is deleted the node is as before, the
// addresses of ADDs cut short included (the daemon's sweep frees them).
func TestCNIKillDuringAdds(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 1)
	n := nodes[0]
	warm, err := n.AddPod(ctx, netlab.PodConfig{Name: "warm"})
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	base := steadySnapshot(t, ctx, n)

	const workers = 8
	var mu sync.Mutex
	var pods []*netlab.Pod
	failed := 0
	killAt := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				p, err := n.AddPod(ctx, netlab.PodConfig{Name: fmt.Sprintf("k%d-%d", w, i)})
				mu.Lock()
				if err != nil {
					failed++
					mu.Unlock()
					return
				}
				pods = append(pods, p)
				if len(pods) == 40 {
					close(killAt)
				}
				mu.Unlock()
			}
		})
	}
	select {
	case <-killAt:
	case <-ctx.Done():
		t.Fatal("the burst did not reach 40 pods")
	}
	if err := n.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	t.Logf("killed the daemon after %d pods started; %d ADDs failed", len(pods), failed)
	if err := n.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	waitMesh(t, ctx, nodes)

	ips := map[string]netip.Addr{}
	for _, p := range pods {
		ips[p.Name] = p.IP()
		if err := p.Check(ctx); err != nil {
			t.Errorf("CHECK of %s (%s) after the restart: %v", p.Name, p.IP(), err)
		}
	}
	for i := range 20 {
		p, err := n.AddPod(ctx, netlab.PodConfig{Name: fmt.Sprintf("after%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
		ips[p.Name] = p.IP()
	}
	distinct(t, ips)

	var errs []error
	for _, p := range pods {
		errs = append(errs, p.Delete(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sweepCtx, cancelSweep := context.WithTimeout(ctx, 60*time.Second)
	defer cancelSweep()
	poll(t, sweepCtx, func() error {
		s, err := snapshot(ctx, n)
		if err != nil {
			return err
		}
		if d := base.diff(s); d != "" {
			return fmt.Errorf("the node is not as before:\n%s", d)
		}
		return nil
	})
	t.Logf("the node was as before %v after the last DEL", time.Since(start).Round(time.Millisecond))
}
