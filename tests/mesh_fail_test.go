package tests

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/netlab"
)

var podCIDR = netip.MustParsePrefix("10.32.0.0/12")

// meshOf starts n nodes meshed with seeds at node1 and waits for the mesh.
func meshOf(t *testing.T, ctx context.Context, lab *netlab.Lab, n int, extra ...string) ([]*netlab.Node, map[string]netip.Addr) {
	t.Helper()
	nodes, err := lab.AddNodes(0, n)
	if err != nil {
		t.Fatal(err)
	}
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return seedArgs(nodes[0], nodes, extra...) })
	return nodes, waitMesh(t, ctx, nodes)
}

func peerOf(st daemon.PeersStatus, name string) (daemon.PeerStatus, bool) {
	for _, p := range st.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return daemon.PeerStatus{}, false
}

func TestMeshUnderlayCarriesOnlyWireGuard(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, addrs := meshOf(t, ctx, lab, 3)
	pingAll(t, ctx, nodes, addrs)

	pattern := []byte{0xde, 0xad, 0xbe, 0xef, 0x57, 0xef, 0x7f, 0x00}
	capture, err := lab.Capture(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, err := nodes[0].Exec(ctx, "ping", "-c", "5", "-i", "0.2", "-s", "200", "-p", hex.EncodeToString(pattern), addrs[nodes[1].Name].String())
	if err != nil {
		t.Fatalf("ping with a pattern through the tunnel: %v\n%s", err, out)
	}
	packets := capture.Stop()
	if len(packets) == 0 {
		t.Fatal("the capture saw nothing")
	}
	wg := 0
	for _, p := range packets {
		if p.Contains(pattern) {
			t.Errorf("the ping payload crossed the underlay in clear: %s %s:%d -> %s:%d", p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort)
		}
		for _, a := range addrs {
			if bytes.Contains(p.Data, a.AsSlice()) {
				t.Errorf("an overlay address (%s) crossed the underlay in clear: %s %s -> %s", a, p.Proto, p.Src, p.Dst)
			}
		}
		if podCIDR.Contains(p.Src) || podCIDR.Contains(p.Dst) {
			t.Errorf("a packet with a pod-range address on the underlay: %s -> %s", p.Src, p.Dst)
		}
		switch {
		case p.Proto == netlab.ProtoARP:
		case p.Proto == netlab.ProtoUDP && (p.DstPort == 6784 || p.SrcPort == 6784):
			wg++
		case p.Proto == netlab.ProtoUDP && (p.DstPort == 6783 || p.SrcPort == 6783):
		case p.Proto == netlab.ProtoTCP && (p.DstPort == 6783 || p.SrcPort == 6783):
		default:
			t.Errorf("unexpected packet on the underlay: %s %s:%d -> %s:%d", p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort)
		}
	}
	if wg < 10 {
		t.Errorf("saw %d WireGuard packets for 5 pings and their replies", wg)
	}
	t.Logf("%d frames captured, %d WireGuard", len(packets), wg)
}

func TestMeshSecrets(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 2)

	stranger, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := stranger.SetSecret([]byte("another cluster's secret, 32 bytes long")); err != nil {
		t.Fatal(err)
	}
	all := append(nodes, stranger)
	if err := stranger.StartDaemon(seedArgs(nodes[0], all)...); err != nil {
		t.Fatal(err)
	}
	if err := stranger.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	// For longer than it takes an honest node to join (about a second), the
	// stranger must show up nowhere.
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			st, err := peersStatus(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := peerOf(st, stranger.Name); ok || len(st.Peers) != len(nodes)-1 {
				t.Fatalf("%s has a peer entry for the node with another secret: %+v", n.Name, st.Peers)
			}
		}
		st, err := peersStatus(ctx, stranger)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Peers) != 0 || st.Members > 1 {
			t.Fatalf("the node with another secret got members or tunnels: members=%d peers=%+v", st.Members, st.Peers)
		}
		time.Sleep(250 * time.Millisecond)
	}
	out, err := stranger.Exec(ctx, "wg", "show", "weft", "peers")
	if err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("the stranger's tunnel has peers: %s", out)
	}

	// No secret at all: refuse to start, and say how to make one.
	loner, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := loner.Command(ctx, weftBinary, "daemon", "--node-name", loner.Name, "--state-dir", loner.StateDir(), "--run-dir", loner.RunDir())
	out, err = cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("a daemon without a secret started:\n%s", out)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 || !bytes.Contains(out, []byte("--secret-file")) || !bytes.Contains(out, []byte("urandom")) {
		t.Errorf("a daemon without a secret should exit non-zero saying how to make one; got %v:\n%s", err, out)
	}
}

func TestMeshKillRestartAndReap(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const reap = 20 * time.Second
	nodes, _ := meshOf(t, ctx, lab, 3, "--reap-time", reap.String())
	victim := nodes[2]
	before, err := peersStatus(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	st1, _ := peersStatus(ctx, nodes[0])
	unrelated, _ := peerOf(st1, nodes[1].Name)

	if err := victim.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	detect := mesh.DefaultConfig().FailureDetectionTime(len(nodes))
	for _, n := range nodes[:2] {
		poll(t, ctx, func() error {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			p, ok := peerOf(st, victim.Name)
			if !ok {
				return fmt.Errorf("%s dropped the tunnel to %s before the reap time", n.Name, victim.Name)
			}
			if p.State != "down" {
				return fmt.Errorf("%s still sees %s as %s", n.Name, victim.Name, p.State)
			}
			return nil
		})
	}
	seen := time.Since(killed)
	t.Logf("kill -9 seen as down after %v (documented failure detection: %v)", seen.Round(time.Millisecond), detect)
	if seen > detect+3*time.Second {
		t.Errorf("took %v to see a dead node, documented %v", seen, detect)
	}
	// Other peers' entries are not touched by the death.
	st1, _ = peersStatus(ctx, nodes[0])
	if p, _ := peerOf(st1, nodes[1].Name); p.PublicKey != unrelated.PublicKey || strings.Join(p.AllowedIPs, ",") != strings.Join(unrelated.AllowedIPs, ",") || p.Endpoint != unrelated.Endpoint {
		t.Errorf("an unrelated peer changed: %+v -> %+v", unrelated, p)
	}

	// After the reap time the tunnel goes.
	poll(t, ctx, func() error {
		st, err := peersStatus(ctx, nodes[0])
		if err != nil {
			return err
		}
		if _, ok := peerOf(st, victim.Name); ok {
			return fmt.Errorf("%s still has a tunnel to %s", nodes[0].Name, victim.Name)
		}
		return nil
	})
	if reaped := time.Since(killed); reaped < reap {
		t.Errorf("tunnel reaped after %v, before the reap time %v", reaped, reap)
	}

	// Restart with the same state: same key, and the mesh heals.
	if err := victim.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := victim.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	addrs := waitMesh(t, ctx, nodes)
	after, err := peersStatus(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	if after.PublicKey != before.PublicKey {
		t.Errorf("public key changed across restart: %s -> %s", before.PublicKey, after.PublicKey)
	}
	if after.TunnelAddr != before.TunnelAddr {
		t.Errorf("tunnel address changed across restart: %s -> %s", before.TunnelAddr, after.TunnelAddr)
	}
	pingAll(t, ctx, nodes, addrs)
}

func TestMeshPartitionHeals(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 4)
	left, right := nodes[:2], nodes[2:]
	if err := lab.CutGroups(left, right); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		others := right
		if n == right[0] || n == right[1] {
			others = left
		}
		poll(t, ctx, func() error {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			for _, o := range others {
				if p, ok := peerOf(st, o.Name); ok && p.State == "alive" {
					return fmt.Errorf("%s still sees %s alive across the cut", n.Name, o.Name)
				}
			}
			return nil
		})
	}
	if err := lab.HealGroups(left, right); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	cfg := mesh.DefaultConfig()
	addrs := waitMesh(t, ctx, nodes)
	took := time.Since(healed)
	t.Logf("partition healed after %v (documented: within RejoinInterval %v plus a join)", took.Round(time.Millisecond), cfg.RejoinInterval)
	if took > cfg.RejoinInterval+cfg.TCPTimeout+5*time.Second {
		t.Errorf("healing took %v, more than the documented %v", took, cfg.RejoinInterval+cfg.TCPTimeout)
	}
	pingAll(t, ctx, nodes, addrs)
}
