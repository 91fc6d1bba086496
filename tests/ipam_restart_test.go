package tests

import (
	"context"
	"testing"
	"time"
)

// Every daemon of the cluster stopped and started again at once (a mass
// restart, an upgrade of the DaemonSet): every key keeps its address, and
// what is handed out afterwards collides with nothing.
func TestIPAMMassRestart(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 3, "--pod-cidr", smallRange.String())
	first := allocateOnAll(t, ctx, nodes, "first", []int{50, 50, 50})
	if t.Failed() {
		t.FailNow()
	}
	ringBefore := waitRings(t, ctx, nodes)
	for _, n := range nodes {
		if err := n.KillDaemon(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		if err := n.RestartDaemon(); err != nil {
			t.Fatal(err)
		}
	}
	restarted := time.Now()
	for _, n := range nodes {
		if err := n.WaitSocket(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitMesh(t, ctx, nodes)
	t.Logf("mesh back %v after the mass restart", time.Since(restarted).Round(time.Millisecond))
	for _, n := range nodes {
		for k, a := range first[n.Name] {
			got, _, err := allocateRetry(ctx, n, k)
			if err != nil {
				t.Fatal(err)
			}
			if got != a {
				t.Errorf("%s on %s: %s before the restart, %s after", k, n.Name, a, got)
			}
		}
	}
	second := allocateOnAll(t, ctx, nodes, "second", []int{50, 50, 50})
	ringAfter := waitRings(t, ctx, nodes)
	if ringAfter.String() != ringBefore.String() {
		t.Logf("the ring changed (donations): %s -> %s", ringBefore, ringAfter)
	}
	all := distinct(t, first[nodes[0].Name], first[nodes[1].Name], first[nodes[2].Name],
		second[nodes[0].Name], second[nodes[1].Name], second[nodes[2].Name])
	if len(all) != 300 {
		t.Errorf("%d distinct addresses for 300 keys", len(all))
	}
	for _, n := range nodes {
		for k, a := range second[n.Name] {
			if o := ringAfter.ownerOf(a); o != n.Name {
				t.Errorf("%s handed out %s (%s) after the restart, which the ring gives to %q", n.Name, a, k, o)
			}
		}
	}
}
