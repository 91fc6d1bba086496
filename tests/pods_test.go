package tests

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/netlab"
)

// addPods gives every node count pods named <node>-p<i>.
func addPods(t *testing.T, ctx context.Context, nodes []*netlab.Node, count int) []*netlab.Pod {
	t.Helper()
	var pods []*netlab.Pod
	for _, n := range nodes {
		for i := 0; i < count; i++ {
			p, err := n.AddPod(ctx, netlab.PodConfig{Namespace: "default", Name: fmt.Sprintf("%s-p%d", n.Name, i)})
			if err != nil {
				t.Fatalf("add pod on %s: %v\ndaemon log:\n%s", n.Name, err, n.LogTail(30))
			}
			pods = append(pods, p)
		}
	}
	return pods
}

// echoServer answers every line with the address the line came from, over
// TCP and UDP on port, inside the pod, until the test ends.
func echoServer(t *testing.T, p *netlab.Pod, port int) {
	t.Helper()
	ln, err := p.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("listen tcp in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				}
			}()
		}
	}()
	pc, err := listenPacketIn(p.Netns, "udp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("listen udp in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(from.String()+"\n"), from)
		}
	}()
}

// listenPacketIn opens a packet socket inside the network namespace at path;
// the socket stays there for its life.
func listenPacketIn(path, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// exchange sends a line to addr over network from the pod and returns the
// source address the server saw.
func exchange(ctx context.Context, from *netlab.Pod, network, addr string) (netip.Addr, error) {
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := from.Dial(dctx, network, addr)
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "hello from %s\n", from.Name); err != nil {
		return netip.Addr{}, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return netip.Addr{}, err
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr().Unmap(), nil
}

func TestPodsReachEachOther(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, tunnel := meshOf(t, ctx, lab, 3)
	pods := addPods(t, ctx, nodes, 2)

	seen := map[netip.Addr]string{}
	for _, p := range pods {
		ip := p.IP()
		if !podCIDR.Contains(ip) {
			t.Fatalf("pod %s got %s, outside the pod range", p.Name, ip)
		}
		if other, dup := seen[ip]; dup {
			t.Fatalf("pods %s and %s both got %s", other, p.Name, ip)
		}
		seen[ip] = p.Name
		echoServer(t, p, 7000)
	}
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			poll(t, ctx, func() error {
				if _, err := a.Ping(ctx, b.IP()); err != nil {
					return fmt.Errorf("ping %s -> %s: %w", a.Name, b.Name, err)
				}
				return nil
			})
			for _, network := range []string{"tcp", "udp"} {
				src, err := exchange(ctx, a, network, netip.AddrPortFrom(b.IP(), 7000).String())
				if err != nil {
					t.Errorf("%s %s -> %s: %v", network, a.Name, b.Name, err)
					continue
				}
				if src != a.IP() {
					t.Errorf("%s %s -> %s: the server saw source %s, not the pod's own %s (NAT between pods)", network, a.Name, b.Name, src, a.IP())
				}
			}
		}
		// A pod reaches its own node (underlay and tunnel address) and
		// every node's tunnel address.
		if _, err := a.Ping(ctx, a.Node.Addr); err != nil {
			t.Errorf("pod %s cannot reach its node at %s: %v", a.Name, a.Node.Addr, err)
		}
		for _, n := range nodes {
			if _, err := a.Ping(ctx, tunnel[n.Name]); err != nil {
				t.Errorf("pod %s cannot reach %s at its tunnel address %s: %v", a.Name, n.Name, tunnel[n.Name], err)
			}
		}
	}
}

func TestPodHostPort(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 2)
	pod, err := nodes[1].AddPod(ctx, netlab.PodConfig{Name: "web", CapabilityArgs: map[string]any{
		"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}},
	}})
	if err != nil {
		t.Fatalf("add pod with a hostPort: %v", err)
	}
	ln, err := pod.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "weft hostPort ok")
			c.Close()
		}
	}()
	poll(t, ctx, func() error {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		c, err := nodes[0].Dial(dctx, "tcp", net.JoinHostPort(nodes[1].Addr.String(), "8080"))
		if err != nil {
			return fmt.Errorf("dial the hostPort from another node: %w", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "weft hostPort ok" {
			return fmt.Errorf("hostPort answered %q, %v", line, err)
		}
		return nil
	})
}
