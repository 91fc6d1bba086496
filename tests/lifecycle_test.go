package tests

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// TestDaemonRestartKeepsConnections: a kill -9 and restart of a daemon
// costs a pod's TCP connection to a pod on another node no more than a
// moment: the tunnel device, routes and rules stay, and the restarted
// daemon re-attaches.
func TestDaemonRestartKeepsConnections(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 2)
	server, err := nodes[1].AddPod(ctx, netlab.PodConfig{Name: "server"})
	if err != nil {
		t.Fatal(err)
	}
	client, err := nodes[0].AddPod(ctx, netlab.PodConfig{Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprint(c, line)
		}
	}()
	var conn net.Conn
	poll(t, ctx, func() error {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err = client.Dial(dctx, "tcp", net.JoinHostPort(server.IP().String(), "9000"))
		return err
	})
	defer conn.Close()
	r := bufio.NewReader(conn)
	echo := func(i int) error {
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := fmt.Fprintf(conn, "line %d\n", i); err != nil {
			return err
		}
		got, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if got != fmt.Sprintf("line %d\n", i) {
			return fmt.Errorf("echo %q", got)
		}
		return nil
	}
	if err := echo(0); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if err := n.KillDaemon(); err != nil {
			t.Fatal(err)
		}
		if out, err := n.Exec(ctx, "ip", "-br", "link", "show", "weft"); err != nil {
			t.Fatalf("the tunnel device of %s is gone after kill -9: %v %s", n.Name, err, out)
		}
		if err := n.RestartDaemon(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitSocket(ctx); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := echo(i + 1); err != nil {
			t.Fatalf("the TCP connection did not survive a restart of %s: %v", n.Name, err)
		}
		t.Logf("%s killed and restarted: connection answered %v after the restart", n.Name, time.Since(start).Round(time.Millisecond))
	}
}

// TestReset: weft reset refuses while the daemon runs, and afterwards
// removes everything weft put on the node.
func TestReset(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, err := lab.AddNodes(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	n := nodes[0]
	binDir, confDir := filepath.Join(n.Dir, "opt-cni-bin"), filepath.Join(n.Dir, "etc-cni")
	cniArgs := []string{"--install-cni", "--cni-bin-dir", binDir, "--cni-conf-dir", confDir}
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return seedArgs(n, nodes, cniArgs...) })
	waitMesh(t, ctx, nodes)
	if _, err := os.Stat(filepath.Join(confDir, "10-weft.conflist")); err != nil {
		t.Fatalf("--install-cni wrote no conflist: %v", err)
	}
	if _, err := n.AddPod(ctx, netlab.PodConfig{Name: "p"}); err != nil {
		t.Fatal(err)
	}
	reset := func() ([]byte, error) {
		args := append([]string{"reset", "--state-dir", n.StateDir(), "--run-dir", n.RunDir()}, "--cni-bin-dir", binDir, "--cni-conf-dir", confDir)
		return n.Exec(ctx, weftBinary, args...)
	}
	if out, err := reset(); err == nil || !strings.Contains(string(out), "stop it first") {
		t.Fatalf("reset with the daemon running should refuse: %v\n%s", err, out)
	}
	if err := n.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if out, err := reset(); err != nil {
		t.Fatalf("weft reset: %v\n%s", err, out)
	}
	checks := map[string][]string{
		"the tunnel device": {"ip", "link", "show", "weft"},
	}
	for what, cmd := range checks {
		if out, err := n.Exec(ctx, cmd[0], cmd[1:]...); err == nil {
			t.Errorf("%s is still there:\n%s", what, out)
		}
	}
	if out, _ := n.Exec(ctx, "ip", "route", "show", "proto", "87"); strings.TrimSpace(string(out)) != "" {
		t.Errorf("weft routes left:\n%s", out)
	}
	if out, _ := n.Exec(ctx, "ip", "-br", "link"); strings.Contains(string(out), "wv") {
		t.Errorf("pod veths left:\n%s", out)
	}
	if out, err := n.Exec(ctx, "nft", "list", "table", "inet", "weft"); err == nil {
		t.Errorf("nftables table left:\n%s", out)
	}
	for _, p := range []string{filepath.Join(confDir, "10-weft.conflist"), filepath.Join(binDir, "weft-cni"), n.StateDir()} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	if out, err := reset(); err != nil {
		t.Errorf("a second reset should be harmless: %v\n%s", err, out)
	}
}
