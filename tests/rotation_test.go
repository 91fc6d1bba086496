package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/crypto"
	"github.com/weftnet/weft/netlab"
)

// pinger is `ping -i 0.1` from a pod, counted when it stops.
type pinger struct {
	what string
	p    *netlab.Process
}

func startPing(t *testing.T, ctx context.Context, from *netlab.Pod, to *netlab.Pod) *pinger {
	t.Helper()
	p, err := from.Spawn(ctx, "ping", "-i", "0.1", "-W", "2", to.IP().String())
	if err != nil {
		t.Fatal(err)
	}
	return &pinger{what: fmt.Sprintf("ping %s -> %s", from.Name, to.Name), p: p}
}

// stop ends the ping and returns how many echoes it sent and got back.
func (pg *pinger) stop(t *testing.T) (sent, got int) {
	t.Helper()
	if err := pg.p.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	_ = pg.p.Wait()
	m := pingSummary.FindStringSubmatch(pg.p.Output())
	if m == nil {
		t.Fatalf("%s: no summary in its output:\n%s", pg.what, pg.p.Output())
	}
	sent, _ = strconv.Atoi(m[1])
	got, _ = strconv.Atoi(m[2])
	return sent, got
}

// checkNoLoss stops the pingers and fails the test for any lost echo.
func checkNoLoss(t *testing.T, pings ...*pinger) {
	t.Helper()
	for _, pg := range pings {
		sent, got := pg.stop(t)
		t.Logf("%s: %d sent, %d received", pg.what, sent, got)
		if sent < 20 || got != sent {
			t.Errorf("%s: %d echoes sent, %d received; want no loss", pg.what, sent, got)
		}
	}
}

// weftCLI runs the weft binary inside node n against its daemon.
func weftCLI(ctx context.Context, n *netlab.Node, args ...string) (string, error) {
	out, err := n.Exec(ctx, weftBinary, append(args, "--run-dir", n.RunDir())...)
	return string(out), err
}

// publicKey is the daemon's public key, in full.
func publicKey(t *testing.T, ctx context.Context, n *netlab.Node) string {
	t.Helper()
	st, err := peersStatus(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	return st.PublicKey
}

// shortKeyOf is the start of a key, as peers' status shows it.
func shortKeyOf(k string) string { return k[:10] + "…" }

// waitPeersUse waits until every other node's WireGuard has node's key
// want and no entry for old.
func waitPeersUse(t *testing.T, ctx context.Context, nodes []*netlab.Node, node *netlab.Node, want, old string) {
	t.Helper()
	poll(t, ctx, func() error {
		for _, n := range nodes {
			if n == node {
				continue
			}
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			found := false
			for _, p := range st.Peers {
				if p.PublicKey == shortKeyOf(old) {
					return fmt.Errorf("%s still has an entry for the old key of %s", n.Name, node.Name)
				}
				if p.Name == node.Name && p.PublicKey == shortKeyOf(want) && p.State == "alive" && routes(p.AllowedIPs, p.TunnelAddr) {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("%s has no live entry with the new key of %s", n.Name, node.Name)
			}
		}
		return nil
	})
}

// checkKeyFiles: the state directory holds the new key only.
func checkKeyFiles(t *testing.T, n *netlab.Node, want string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(n.StateDir(), crypto.PrivateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	if k.PublicKey().String() != want {
		t.Errorf("the key file of %s holds the key of %s, want %s", n.Name, k.PublicKey(), want)
	}
	if _, err := os.Stat(filepath.Join(n.StateDir(), crypto.PendingKeyFile)); !os.IsNotExist(err) {
		t.Errorf("the pending key file of %s is still there after the switch (%v)", n.Name, err)
	}
}

// TestKeyRotation: `weft rotate-key` on one node while pods ping each
// other every 100 ms across nodes (both to and from the rotating node) and
// a TCP stream runs: no echo is lost, the stream neither breaks nor
// resets, every peer's WireGuard has the new key and no entry for the old
// one, and the node's state holds only the new key. Then a rotation
// interrupted by kill -9 (while a peer is frozen, so the switch waits)
// resumes after the restart with the same next key and finishes.
func TestKeyRotation(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 3)
	var pods []*netlab.Pod
	for i, n := range nodes {
		p, err := n.AddPod(ctx, netlab.PodConfig{Name: fmt.Sprintf("pod%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	for _, pair := range [][2]int{{0, 1}, {2, 0}} {
		poll(t, ctx, func() error { _, err := pods[pair[0]].Ping(ctx, pods[pair[1]].IP()); return err })
	}

	t.Run("rotate-key loses nothing", func(t *testing.T) {
		s := startStream(t, ctx, pods[0], pods[1])
		s.settle(t, ctx, time.Second)
		pings := []*pinger{startPing(t, ctx, pods[0], pods[1]), startPing(t, ctx, pods[2], pods[0]), startPing(t, ctx, pods[1], pods[2])}
		s.settle(t, ctx, time.Second) // traffic flows before the rotation
		old := publicKey(t, ctx, nodes[0])
		s.reset()
		start := time.Now()
		out, err := weftCLI(ctx, nodes[0], "rotate-key")
		if err != nil {
			t.Fatalf("weft rotate-key: %v\n%s\n%s", err, out, nodes[0].LogTail(30))
		}
		t.Logf("weft rotate-key took %v:\n%s", time.Since(start).Round(time.Millisecond), out)
		now := publicKey(t, ctx, nodes[0])
		if now == old {
			t.Fatal("the node still uses its old key")
		}
		waitPeersUse(t, ctx, nodes, nodes[0], now, old)
		fwd, back := s.settle(t, ctx, 2*time.Second)
		t.Logf("TCP stream: largest pause %v / %v", fwd.Round(time.Millisecond), back.Round(time.Millisecond))
		checkNoLoss(t, pings...)
		checkKeyFiles(t, nodes[0], now)
	})

	t.Run("kill -9 mid-rotation resumes", func(t *testing.T) {
		old := publicKey(t, ctx, nodes[0])
		frozen := nodes[2].Daemon()
		if err := frozen.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer frozen.Signal(syscall.SIGCONT)
		out, err := weftCLI(ctx, nodes[0], "rotate-key", "--wait=false")
		if err != nil {
			t.Fatalf("weft rotate-key: %v\n%s", err, out)
		}
		next := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "rotating to the key"))
		st, err := peersStatus(ctx, nodes[0])
		if err != nil {
			t.Fatal(err)
		}
		if st.KeyRotation.State != "pending" || st.PublicKey != old || st.KeyRotation.NextPublicKey != next {
			t.Fatalf("rotation state %+v, key %s; want pending to %s while %s is frozen", st.KeyRotation, st.PublicKey, next, nodes[2].Name)
		}
		if err := nodes[0].KillDaemon(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(nodes[0].StateDir(), crypto.PendingKeyFile)); err != nil {
			t.Fatalf("no pending key on disk after kill -9: %v", err)
		}
		logBefore := len(nodes[0].Log())
		if err := nodes[0].RestartDaemon(); err != nil {
			t.Fatal(err)
		}
		if err := nodes[0].WaitSocket(ctx); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(nodes[0].Log()[logBefore:], "resuming the key rotation") {
			t.Errorf("the restarted daemon did not resume the rotation:\n%s", nodes[0].LogTail(30))
		}
		// Still pending: the frozen peer has not acked the next key.
		if st, err := peersStatus(ctx, nodes[0]); err != nil || st.KeyRotation.State != "pending" || st.KeyRotation.NextPublicKey != next {
			t.Fatalf("after the restart: rotation %+v (%v); want pending to the same next key %s", st.KeyRotation, err, next)
		}
		if err := frozen.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		poll(t, ctx, func() error {
			st, err := peersStatus(ctx, nodes[0])
			if err != nil {
				return err
			}
			if st.PublicKey != next {
				return fmt.Errorf("%s uses %s, not the next key %s (rotation %+v)", nodes[0].Name, st.PublicKey, next, st.KeyRotation)
			}
			return nil
		})
		waitPeersUse(t, ctx, nodes, nodes[0], next, old)
		checkKeyFiles(t, nodes[0], next)
		for _, pair := range [][2]int{{0, 1}, {2, 0}, {1, 0}} {
			poll(t, ctx, func() error { _, err := pods[pair[0]].Ping(ctx, pods[pair[1]].IP()); return err })
		}
	})
}
