package tests

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/netlab"
)

// writeSecret replaces a node's secret file atomically, as an operator's
// tooling (or a mounted Secret) does.
func writeSecret(t *testing.T, n *netlab.Node, secret string) {
	t.Helper()
	tmp := n.SecretFile() + ".tmp"
	if err := os.WriteFile(tmp, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, n.SecretFile()); err != nil {
		t.Fatal(err)
	}
}

func newSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func secretsOf(t *testing.T, ctx context.Context, n *netlab.Node) daemon.SecretsStatus {
	t.Helper()
	st, err := peersStatus(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if st.Secrets == nil {
		t.Fatalf("%s shows no secrets", n.Name)
	}
	return *st.Secrets
}

// checkOut: intruder is in no node's mesh and has no member itself.
func checkOut(t *testing.T, ctx context.Context, nodes []*netlab.Node, intruder *netlab.Node) {
	t.Helper()
	for _, n := range nodes {
		st, err := peersStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := peerOf(st, intruder.Name); ok {
			t.Errorf("%s has %s, which has an unrelated secret, as a peer: %+v", n.Name, intruder.Name, p)
		}
	}
	if st, err := peersStatus(ctx, intruder); err != nil || st.Members != 0 {
		t.Errorf("%s, with an unrelated secret, sees %d members (%v); want none", intruder.Name, st.Members, err)
	}
}

// TestSecretRotation: a new cluster secret written to --secret-file on
// three nodes, one after another, while pods ping each other every 100 ms
// and a TCP stream runs between them: no echo is lost and the stream
// never breaks. A fourth node keeps only the old secret: its pod reaches
// the others until the overlap ends, and it is out afterwards. A fifth
// node with an unrelated secret tries to join throughout and never gets
// in. Afterwards a key rotation forces fresh handshakes, which work only
// with the preshared keys of the new secret.
func TestSecretRotation(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const overlap = 25 * time.Second
	nodes, _ := meshOf(t, ctx, lab, 4, "--secret-overlap", overlap.String())
	rotating, stale := nodes[:3], nodes[3]
	extra, err := lab.AddNodes(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	intruder := extra[0]
	if err := intruder.SetSecret([]byte(newSecret(t))); err != nil {
		t.Fatal(err)
	}
	if err := intruder.StartDaemon(seedArgs(nodes[0], []*netlab.Node{intruder})...); err != nil {
		t.Fatal(err)
	}
	if err := intruder.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	var pods []*netlab.Pod
	for i, n := range nodes {
		p, err := n.AddPod(ctx, netlab.PodConfig{Name: fmt.Sprintf("pod%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	for _, pair := range [][2]int{{0, 1}, {1, 2}, {2, 0}, {3, 0}} {
		poll(t, ctx, func() error { _, err := pods[pair[0]].Ping(ctx, pods[pair[1]].IP()); return err })
	}
	old := secretsOf(t, ctx, nodes[0]).Held[0]

	s := startStream(t, ctx, pods[0], pods[1])
	s.settle(t, ctx, time.Second)
	pings := []*pinger{startPing(t, ctx, pods[0], pods[1]), startPing(t, ctx, pods[1], pods[2]), startPing(t, ctx, pods[2], pods[0])}
	s.reset()
	secret := newSecret(t)
	for _, n := range rotating {
		writeSecret(t, n, secret)
		poll(t, ctx, func() error {
			if held := secretsOf(t, ctx, n).Held; len(held) != 2 || held[1] != old {
				return fmt.Errorf("%s holds %v, want the new secret and the old one %s", n.Name, held, old)
			}
			return nil
		})
	}
	fresh := secretsOf(t, ctx, nodes[0]).Held[0]
	checkOut(t, ctx, nodes, intruder)

	// The node on the old secret works until the overlap ends.
	ends, err := time.Parse(time.RFC3339, secretsOf(t, ctx, rotating[0]).OverlapEnds)
	if err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	stalePings := 0
	for time.Until(ends) > 2*time.Second {
		if _, err := pods[3].Ping(ctx, pods[0].IP()); err != nil {
			t.Fatalf("the node on the old secret lost its path %v before the overlap ends: %v", time.Until(ends), err)
		}
		stalePings++
		<-tick.C
	}
	t.Logf("the node on the old secret answered %d pings during the overlap", stalePings)

	// The overlap ends on every node that has the new secret.
	poll(t, ctx, func() error {
		for _, n := range rotating {
			sec := secretsOf(t, ctx, n)
			if len(sec.Held) != 1 || sec.Held[0] != fresh || sec.Gossip != fresh {
				return fmt.Errorf("%s holds %v, gossips with %s; want only the new secret %s", n.Name, sec.Held, sec.Gossip, fresh)
			}
		}
		return nil
	})
	fwd, back := s.settle(t, ctx, 2*time.Second)
	t.Logf("TCP stream: largest pause %v / %v", fwd.Round(time.Millisecond), back.Round(time.Millisecond))
	checkNoLoss(t, pings...)

	// The node on the old secret is out: no tunnel from the others, and
	// its pod no longer reaches theirs.
	poll(t, ctx, func() error {
		for _, n := range rotating {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			if p, ok := peerOf(st, stale.Name); ok && p.Path != "none" && p.State == "alive" {
				return fmt.Errorf("%s still has %s as a live peer with a tunnel (%s)", n.Name, stale.Name, p.Path)
			}
		}
		if _, err := pods[3].Ping(ctx, pods[0].IP()); err == nil {
			return fmt.Errorf("the pod of %s still reaches %s", stale.Name, pods[0].Name)
		}
		return nil
	})
	checkOut(t, ctx, rotating, intruder)

	// Fresh handshakes everywhere: they need the new preshared keys.
	if out, err := weftCLI(ctx, rotating[1], "rotate-key"); err != nil {
		t.Fatalf("weft rotate-key: %v\n%s", err, out)
	}
	for _, pair := range [][2]int{{0, 1}, {1, 2}, {2, 0}} {
		poll(t, ctx, func() error { _, err := pods[pair[0]].Ping(ctx, pods[pair[1]].IP()); return err })
	}
}
