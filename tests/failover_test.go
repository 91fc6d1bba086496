package tests

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// pathOf is how n reaches peer now: "direct", or "relayed via R".
func pathOf(ctx context.Context, n, peer *netlab.Node) (string, error) {
	st, err := peersStatus(ctx, n)
	if err != nil {
		return "", err
	}
	p, ok := peerOf(st, peer.Name)
	if !ok {
		return "", fmt.Errorf("%s has no peer %s", n.Name, peer.Name)
	}
	if p.Via != "" {
		return p.Path + " via " + p.Via, nil
	}
	return p.Path, nil
}

// timeUntil polls every 50 ms until both ends of the pair (a, b) see the
// path want ("direct" or "relayed") and returns how long that took from
// start; it fails after limit.
func timeUntil(t *testing.T, ctx context.Context, a, b *netlab.Node, relayed bool, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	for {
		ok := true
		var last string
		for _, pair := range [][2]*netlab.Node{{a, b}, {b, a}} {
			p, err := pathOf(ctx, pair[0], pair[1])
			if err != nil || (p != "direct") != relayed {
				ok, last = false, fmt.Sprintf("%s reaches %s %s (err %v)", pair[0].Name, pair[1].Name, p, err)
				break
			}
		}
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("after %v: %s", limit, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// TestFailoverCutAndHeal: a cut direct path is relayed within 5 s and back
// to direct within 5 s of the heal; a ping running throughout loses no more
// than the packets of those windows; 5% loss on a link switches nothing.
func TestFailoverCutAndHeal(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nodes, addrs := meshOf(t, ctx, lab, 3)
	pingAll(t, ctx, nodes, addrs)
	a, b := nodes[0], nodes[1]
	// The probes have judged the path up on both ends.
	poll(t, ctx, func() error {
		for _, pair := range [][2]*netlab.Node{{a, b}, {b, a}} {
			st, err := peersStatus(ctx, pair[0])
			if err != nil {
				return err
			}
			if p, _ := peerOf(st, pair[1].Name); p.DirectPath != "up" || p.RTT <= 0 {
				return fmt.Errorf("%s: direct path to %s %q, rtt %v", pair[0].Name, pair[1].Name, p.DirectPath, p.RTT)
			}
		}
		return nil
	})

	// 10 pings a second from a to b throughout the cut and the heal.
	const pingFor = 24
	pingDone := make(chan string, 1)
	go func() {
		out, _ := a.Exec(ctx, "ping", "-n", "-q", "-i", "0.1", "-w", strconv.Itoa(pingFor), addrs[b.Name].String())
		pingDone <- string(out)
	}()
	time.Sleep(2 * time.Second)
	if err := lab.Cut(a, b); err != nil {
		t.Fatal(err)
	}
	failover := timeUntil(t, ctx, a, b, true, time.Now(), 15*time.Second)
	via, _ := pathOf(ctx, a, b)
	t.Logf("cut %s-%s: %s after %v", a.Name, b.Name, via, failover.Round(time.Millisecond))
	time.Sleep(5 * time.Second) // pings go through the relay meanwhile
	if err := lab.Heal(a, b); err != nil {
		t.Fatal(err)
	}
	heal := timeUntil(t, ctx, a, b, false, time.Now(), 15*time.Second)
	t.Logf("healed %s-%s: direct again after %v", a.Name, b.Name, heal.Round(time.Millisecond))
	if failover > 5*time.Second {
		t.Errorf("relayed %v after the cut, want within 5 s", failover)
	}
	if heal > 5*time.Second {
		t.Errorf("direct again %v after the heal, want within 5 s", heal)
	}
	out := <-pingDone
	m := pingSummary.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ping printed no summary:\n%s", out)
	}
	sent, _ := strconv.Atoi(m[1])
	got, _ := strconv.Atoi(m[2])
	// 10 pings a second: at most the pings of the two windows are lost
	// (and one in flight at each switch).
	budget := int(10*(failover+heal).Seconds()) + 2
	t.Logf("ping through cut and heal: %d sent, %d lost (budget %d)", sent, sent-got, budget)
	if sent-got > budget {
		t.Errorf("%d pings lost, more than the %d of the failover and heal windows", sent-got, budget)
	}

	// 5% loss each way on a's link: the pair stays direct.
	if err := lab.SetLoss(a, 5); err != nil {
		t.Fatal(err)
	}
	defer lab.SetLoss(a, 0)
	end := time.Now().Add(30 * time.Second)
	for time.Now().Before(end) {
		for _, pair := range [][2]*netlab.Node{{a, b}, {b, a}, {a, nodes[2]}} {
			if p, err := pathOf(ctx, pair[0], pair[1]); err != nil || p != "direct" {
				t.Fatalf("under 5%% loss %s reaches %s %s (err %v): one lost probe must not switch", pair[0].Name, pair[1].Name, p, err)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	st, err := peersStatus(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := peerOf(st, b.Name)
	t.Logf("after 30 s of 5%% loss: %s-%s direct, probe loss %.1f%%, rtt %.2f ms", a.Name, b.Name, 100*p.ProbeLoss, 1000*p.RTT)
	if p.ProbeLoss == 0 {
		t.Error("the probes saw no loss under 5% loss: are they probing?")
	}
}
