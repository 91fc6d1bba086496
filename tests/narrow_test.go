package tests

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/cniplugin"
	"github.com/weftnet/weft/netlab"
)

// TestNarrowNodeFootprint runs daemons on nodes whose operator set strict
// source validation host-wide (net.ipv4.conf.all.rp_filter=1) and checks
// what weft does to the node: pod traffic between nodes and to the nodes
// flows, the kernel drops nothing for its source, conf.all stays 1 while
// weft's own interfaces are loose (2); and the default --metrics-addr
// :6782 answers on the node's address and loopback but not on its other
// addresses (the tunnel address on the device weft).
func TestNarrowNodeFootprint(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		inNode(t, n, func() error {
			for _, c := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+c+"/rp_filter", []byte("1"), 0o644); err != nil {
					return err
				}
			}
			return nil
		})
	}
	drops := map[string]int{}
	for _, n := range nodes {
		inNode(t, n, func() (err error) { drops[n.Name], err = rpFilterDrops(); return err })
	}
	startAll(t, ctx, nodes, func(*netlab.Node) []string {
		return seedArgs(nodes[0], nodes, "--metrics-addr", ":6782")
	})
	tunnel := waitMesh(t, ctx, nodes)
	pods := addPods(t, ctx, nodes, 1)

	for _, a := range pods {
		for _, b := range pods {
			if a != b {
				poll(t, ctx, func() error {
					_, err := a.Ping(ctx, b.IP())
					return err
				})
			}
		}
		for _, n := range nodes {
			if _, err := a.Ping(ctx, tunnel[n.Name]); err != nil {
				t.Errorf("pod %s cannot reach %s at its tunnel address %s: %v", a.Name, n.Name, tunnel[n.Name], err)
			}
		}
		if _, err := a.Ping(ctx, a.Node.Addr); err != nil {
			t.Errorf("pod %s cannot reach its node at %s: %v", a.Name, a.Node.Addr, err)
		}
	}
	for _, n := range nodes {
		inNode(t, n, func() error {
			want := map[string]string{"all": "1", "weft": "2"}
			links, err := os.ReadDir("/proc/sys/net/ipv4/conf")
			if err != nil {
				return err
			}
			for _, l := range links {
				if cniplugin.IsHostVethName(l.Name()) { // the pods' host ends
					want[l.Name()] = "2"
				}
			}
			if len(want) < 3 {
				return fmt.Errorf("no pod host end among %v", links)
			}
			for iface, v := range want {
				b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + iface + "/rp_filter")
				if err != nil {
					return err
				}
				if got := strings.TrimSpace(string(b)); got != v {
					t.Errorf("%s: net.ipv4.conf.%s.rp_filter = %s, want %s", n.Name, iface, got, v)
				}
			}
			now, err := rpFilterDrops()
			if err != nil {
				return err
			}
			if now != drops[n.Name] {
				t.Errorf("%s: the kernel dropped %d packets for their source", n.Name, now-drops[n.Name])
			}
			return nil
		})
	}

	// /healthz on the node's address and on loopback; nothing on the
	// tunnel address, which a ":6782" bound to every interface would serve.
	n := nodes[0]
	client := metricsClient(n)
	for _, host := range []string{n.Addr.String(), "127.0.0.1"} {
		poll(t, ctx, func() error {
			resp, err := client.Get("http://" + net.JoinHostPort(host, "6782") + "/healthz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET /healthz on %s: %s", host, resp.Status)
			}
			return nil
		})
	}
	c, err := n.Dial(ctx, "tcp", net.JoinHostPort(tunnel[n.Name].String(), "6782"))
	if err == nil {
		c.Close()
		t.Errorf("/metrics answers on the tunnel address %s: bound to every interface", tunnel[n.Name])
	} else if !errors.Is(err, syscall.ECONNREFUSED) && !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("dial the tunnel address: %v, want connection refused", err)
	}
}

// inNode runs f on a thread in n's network namespace (where /proc/sys/net
// and /proc/thread-self/net are n's).
func inNode(t *testing.T, n *netlab.Node, f func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(n.Netns, func(ns.NetNS) error { return f() }); err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
}

// rpFilterDrops reads the calling thread's namespace's count of packets
// dropped by source validation (TcpExt IPReversePathFilter).
func rpFilterDrops() (int, error) {
	b, err := os.ReadFile("/proc/thread-self/net/netstat")
	if err != nil {
		return 0, err
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) || values[0] != "TcpExt:" {
			continue
		}
		for j, name := range names {
			if name == "IPReversePathFilter" {
				return strconv.Atoi(values[j])
			}
		}
	}
	return 0, errors.New("no TcpExt IPReversePathFilter in /proc/thread-self/net/netstat")
}
