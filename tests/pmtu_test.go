package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// wgOverheadIPv4 is what WireGuard adds to a packet over an IPv4 underlay:
// outer IPv4 (20) and UDP (8) headers, its data header (16) and the
// Poly1305 tag (16). (It also pads the packet to a multiple of 16.)
const wgOverheadIPv4 = 20 + 8 + 16 + 16

// TestPathMTUClamp: three nodes; the path node1-node3 drops every packet
// over 1280 bytes without a word (a VPN with filtered ICMP), the others
// carry 1500. Every node measures its peers: node3 is seen at most
// 1280 - 60 from node1 and node1 from node3, the rest at the full tunnel
// MTU. With the clamp, TCP bulk transfer between pods across the small
// path completes; without it (--mss-clamp=false) the same transfer stalls
// while pings still pass: the black hole the clamp removes.
//
// In an IPv6-only cluster the nodes measure with ICMPv6 echoes between
// their IPv6 tunnel addresses, and the clamp keeps bulk TCP between IPv6
// pods across the small path going.
func TestPathMTUClamp(t *testing.T) {
	for _, clamp := range []bool{true, false} {
		t.Run(fmt.Sprintf("mss-clamp=%v", clamp), func(t *testing.T) {
			testPathMTU(t, clamp)
		})
	}
	t.Run("IPv6-only mss-clamp=true", func(t *testing.T) {
		testPathMTU(t, true, "--pod-cidr", "fd10:41::/48")
	})
}

func testPathMTU(t *testing.T, clamp bool, extra ...string) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, err := lab.AddNodes(0, 3)
	if err != nil {
		t.Fatal(err)
	}
	n1, n3 := nodes[0], nodes[2]
	const limit = 1280
	if err := lab.LimitPath(n1, n3, limit); err != nil {
		t.Fatal(err)
	}
	startAll(t, ctx, nodes, func(*netlab.Node) []string {
		return seedArgs(n1, nodes, append([]string{fmt.Sprintf("--mss-clamp=%v", clamp), "--metrics-addr", ":6782"}, extra...)...)
	})
	waitMesh(t, ctx, nodes)

	// What each node must see of each peer: small across the limited
	// path, the full tunnel MTU elsewhere.
	small := map[[2]string]bool{{n1.Name, n3.Name}: true, {n3.Name, n1.Name}: true}
	poll(t, ctx, func() error {
		for _, n := range nodes {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if small[[2]string{n.Name, p.Name}] {
					if p.PMTU <= 0 || p.PMTU > limit-wgOverheadIPv4 {
						return fmt.Errorf("%s sees the path MTU of %s as %d, want 1..%d", n.Name, p.Name, p.PMTU, limit-wgOverheadIPv4)
					}
				} else if p.PMTU != st.MTU {
					return fmt.Errorf("%s sees the path MTU of %s as %d, want the tunnel's %d", n.Name, p.Name, p.PMTU, st.MTU)
				}
			}
		}
		return nil
	})
	st, _ := peersStatus(ctx, n1)
	for _, p := range st.Peers {
		t.Logf("%s: pmtu of %s is %d (tunnel MTU %d)", n1.Name, p.Name, p.PMTU, st.MTU)
	}
	metrics := metricsOf(t, ctx, n1)
	for _, want := range []string{fmt.Sprintf(`weft_peer_path_mtu_bytes{peer="node2"} %d`, st.MTU), `weft_peer_path_mtu_bytes{peer="node3"} `} {
		if !strings.Contains(metrics, want) {
			t.Errorf("the metrics of %s lack %q", n1.Name, want)
		}
	}

	pods := addPods(t, ctx, nodes, 1)
	p1, p2, p3 := pods[0], pods[1], pods[2]
	if len(extra) > 0 && !p3.IP().Is6() {
		t.Fatalf("pod %s has %s, want an IPv6 address in an IPv6-only cluster", p3.Name, p3.IP())
	}
	for _, p := range []*netlab.Pod{p2, p3} {
		poll(t, ctx, func() error {
			if p.IP().Is6() {
				return ping6(ctx, p1, p.IP())
			}
			_, err := p1.Ping(ctx, p.IP())
			return err
		})
	}
	// The full-size path carries bulk TCP either way.
	if err := bulkTransfer(ctx, p1, p2, 4<<20, 30*time.Second); err != nil {
		t.Fatalf("bulk TCP %s -> %s over the full-size path: %v", p1.Name, p2.Name, err)
	}
	err = bulkTransfer(ctx, p1, p3, 4<<20, 20*time.Second)
	if clamp {
		if err != nil {
			for _, n := range []*netlab.Node{n1, n3} {
				out, _ := n.Exec(ctx, "nft", "list", "table", "inet", "weft")
				t.Logf("weft's nftables table on %s:\n%s", n.Name, out)
			}
			t.Fatalf("bulk TCP %s -> %s across the %d-byte path with the MSS clamp: %v", p1.Name, p3.Name, limit, err)
		}
		return
	}
	if err == nil {
		t.Fatalf("bulk TCP %s -> %s across the %d-byte path completed without the clamp: the test cannot see a black hole", p1.Name, p3.Name, limit)
	}
	t.Logf("without the clamp, as expected: %v", err)
	if _, err := p1.Ping(ctx, p3.IP()); err != nil {
		t.Errorf("small pings %s -> %s fail too (%v): the path is down, not black-holing large packets", p1.Name, p3.Name, err)
	}
}

// bulkTransfer sends size bytes from a pod to a server in pod to, which
// sends them back; both directions must complete within d.
func bulkTransfer(ctx context.Context, from, to *netlab.Pod, size int64, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	ln, err := to.Listen("tcp", ":9100")
	if err != nil {
		return err
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		deadline, _ := ctx.Deadline()
		c.SetDeadline(deadline)
		n, err := io.Copy(io.Discard, c)
		if err == nil && n != size {
			err = fmt.Errorf("server got %d bytes, want %d", n, size)
		}
		if err == nil {
			_, err = io.CopyN(c, zeros{}, size)
		}
		served <- err
	}()
	c, err := from.Dial(ctx, "tcp", netip.AddrPortFrom(to.IP(), 9100).String())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	start := time.Now()
	if _, err := io.CopyN(c, zeros{}, size); err != nil {
		return fmt.Errorf("send: %w after %v", err, time.Since(start).Round(time.Millisecond))
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return fmt.Errorf("receive: %w after %d bytes, %v", err, n, time.Since(start).Round(time.Millisecond))
	}
	if n != size {
		return fmt.Errorf("got %d bytes back, want %d", n, size)
	}
	if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// metricsOf fetches /metrics of n's daemon (--metrics-addr :6782).
func metricsOf(t *testing.T, ctx context.Context, n *netlab.Node) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return n.Dial(ctx, network, addr) },
	}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Addr.String()+":6782/metrics", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("metrics of %s: %v", n.Name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
