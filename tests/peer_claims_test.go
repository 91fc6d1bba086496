//go:build linux

package tests

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/crypto"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/netlab"
)

func init() { labHelpers["rogue"] = rogueHelper }

// rogueHelper runs in a node (the test binary started again): a member of
// the mesh that holds the cluster secret but no share of the address ring,
// and announces the tunnel address $WEFT_ROGUE_TUNNEL_ADDR, as a buggy or
// compromised node might. It stays until killed.
func rogueHelper() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "rogue helper:", err)
		os.Exit(1)
	}
	secret, err := crypto.ReadSecret(os.Getenv("WEFT_ROGUE_SECRET"))
	if err != nil {
		fail(err)
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		fail(err)
	}
	bind := os.Getenv("WEFT_ROGUE_BIND")
	cfg := mesh.DefaultConfig()
	cfg.NodeName = os.Getenv("WEFT_ROGUE_NAME")
	cfg.BindAddr = bind
	cfg.Key = secret.GossipKey()
	cfg.Seeds = []string{os.Getenv("WEFT_ROGUE_SEED")}
	cfg.Meta = mesh.Meta{
		PublicKey:  key.PublicKey(),
		Endpoint:   bind + ":6784",
		TunnelAddr: netip.MustParseAddr(os.Getenv("WEFT_ROGUE_TUNNEL_ADDR")),
	}
	m, err := mesh.New(cfg)
	if err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if os.Getenv("WEFT_ROGUE_FORGE") != "" {
		go forgeRequests(ctx, m)
	}
	if err := m.Run(ctx); err != nil {
		fail(err)
	}
}

// forgeRequests asks every member for address space twice a second, with
// a MAC that no key the rogue announces made: a weft direct message ('m',
// the allocator's tag, then the donation request, then 16 bytes of MAC).
func forgeRequests(ctx context.Context, m *mesh.Mesh) {
	msg := append([]byte{'m'}, `{"v":1,"t":"donate?","id":1}`...)
	msg = append(msg, make([]byte, 16)...)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := rand.Read(msg[len(msg)-16:]); err != nil {
			return
		}
		for _, p := range m.Members() {
			_ = m.SendTo(p.Name, msg)
		}
	}
}

// startRogue runs rogueHelper as member name on host, joining at seed with
// the secret in secretFile; it is stopped when the test ends. The function
// it returns fails the test if the helper has exited.
func startRogue(t *testing.T, ctx context.Context, host *netlab.Node, name, seed, secretFile, tunnelAddr string, env ...string) func() {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WEFT_LAB_HELPER=rogue", "WEFT_ROGUE_NAME="+name,
		"WEFT_ROGUE_BIND="+host.Addr.String(), "WEFT_ROGUE_SEED="+seed,
		"WEFT_ROGUE_SECRET="+secretFile, "WEFT_ROGUE_TUNNEL_ADDR="+tunnelAddr)
	cmd.Env = append(cmd.Env, env...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	p, err := host.StartCmd(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
	return func() {
		if !p.Running() {
			t.Fatalf("rogue helper %s exited: %v\n%s", name, p.Wait(), out)
		}
	}
}

// A member that announces a tunnel address it does not own (another pod's,
// one outside the pod range, one of another node's range) gets no allowed
// IP and no route for it on any node; the refusal shows in `weft status
// peers` and in the log, and traffic to the real owner goes on.
func TestPeerClaimsRefused(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nodes, addrs := meshOf(t, ctx, lab, 3)
	rogueNode, err := lab.AddNodes(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	victim, err := nodes[1].AddPod(ctx, netlab.PodConfig{Name: "victim"})
	if err != nil {
		t.Fatal(err)
	}
	client, err := nodes[0].AddPod(ctx, netlab.PodConfig{Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	// The victim's ADD just returned: its first packets may take a
	// neighbour lookup on a loaded machine, so wait for the first answer.
	poll(t, ctx, func() error {
		if _, err := client.Ping(ctx, victim.IP()); err != nil {
			return fmt.Errorf("client cannot reach the victim pod before any rogue: %w", err)
		}
		return nil
	})
	// An address of node3's range that no pod holds: one above its tunnel
	// address.
	free := addrs[nodes[2].Name].Next()

	cases := []struct {
		name, addr, reason string
	}{
		{"another pod's address", victim.IP().String(), "which the address ring gives to " + nodes[1].Name},
		{"outside the pod range", "192.0.2.7", "outside the pod range"},
		{"another node's range", free.String(), "which the address ring gives to " + nodes[2].Name},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := fmt.Sprintf("rogue%d", i)
			running := startRogue(t, ctx, rogueNode[0], name, nodes[0].Addr.String(), rogueNode[0].SecretFile(), c.addr)
			// Every node sees the rogue, refuses its address, and gives it
			// no allowed IP.
			poll(t, ctx, func() error {
				running()
				for _, n := range nodes {
					st, err := peersStatus(ctx, n)
					if err != nil {
						return err
					}
					ps, ok := peerOf(st, name)
					if !ok {
						return fmt.Errorf("%s does not list %s yet", n.Name, name)
					}
					if !strings.Contains(ps.Refused, c.reason) {
						return fmt.Errorf("%s shows %s refused %q, want it to say %q", n.Name, name, ps.Refused, c.reason)
					}
					if len(ps.AllowedIPs) != 0 {
						t.Errorf("%s gives %s allowed IPs %v", n.Name, name, ps.AllowedIPs)
					}
				}
				return nil
			})
			a := netip.MustParseAddr(c.addr)
			for _, n := range nodes {
				// weft's routes only (proto 87): node2 routes its own pod
				// through the pod's veth.
				out, err := n.Exec(ctx, "ip", "-o", "route", "show", "table", "main", "exact", netip.PrefixFrom(a, 32).String(), "proto", "87")
				if err != nil {
					t.Fatal(err)
				}
				if s := strings.TrimSpace(string(out)); s != "" {
					t.Errorf("%s has a route for the refused %s: %s", n.Name, a, s)
				}
			}
			if _, err := client.Ping(ctx, victim.IP()); err != nil {
				t.Errorf("client cannot reach the victim pod while %s claims %s: %v", name, c.addr, err)
			}
			poll(t, ctx, func() error {
				for _, n := range nodes {
					if !logged(n, "refusing a peer's tunnel address", "peer="+name) {
						return fmt.Errorf("%s has not logged the refusal of %s", n.Name, name)
					}
				}
				return nil
			})
		})
	}

	// A member whose messages are not signed by the key it announces (one
	// that writes another node's name on them is the same to the
	// addressee) is refused: every node logs it and donates nothing.
	t.Run("requests not signed by the sender's key", func(t *testing.T) {
		name := "forger"
		running := startRogue(t, ctx, rogueNode[0], name, nodes[0].Addr.String(), rogueNode[0].SecretFile(), free.String(), "WEFT_ROGUE_FORGE=1")
		poll(t, ctx, func() error {
			running()
			for _, n := range nodes {
				if !logged(n, "direct message refused", "peer="+name, "bad MAC") {
					return fmt.Errorf("%s has not logged refusing the requests of %s", n.Name, name)
				}
			}
			return nil
		})
		for _, n := range nodes {
			if logged(n, "donated addresses", "peer="+name) {
				t.Errorf("%s donated addresses to %s on a request it did not sign", n.Name, name)
			}
		}
		if _, err := client.Ping(ctx, victim.IP()); err != nil {
			t.Errorf("client cannot reach the victim pod while %s sends forged requests: %v", name, err)
		}
	})
}

// logged reports whether one line of n's daemon log holds every part.
func logged(n *netlab.Node, parts ...string) bool {
	for _, line := range strings.Split(n.Log(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}
