//go:build linux

package tests

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// Processes in nodes, their own /run/wireguard, and what Close and
// CleanAll leave behind.

// fakeWeft is a stand-in for the weft binary: it logs its arguments and
// sleeps, so the daemon management is tested without the real daemon.
func fakeWeft(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "weft")
	script := "#!/bin/sh\necho \"fake weft $*\"\necho \"to stderr\" >&2\nexec sleep 1000\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLabProcesses(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{WeftBinary: fakeWeft(t)})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 2)

	if err := n[0].StartDaemon("--peers", n[1].Addr.String()); err != nil {
		t.Fatal(err)
	}
	if !n[0].DaemonRunning() || n[0].DaemonPID() == 0 {
		t.Fatal("daemon not running")
	}
	if err := n[0].StartDaemon(); err == nil {
		t.Error("a second daemon started on the same node")
	}
	waitFor(t, 5*time.Second, func() error {
		if !strings.Contains(n[0].Log(), "to stderr") {
			return fmt.Errorf("log so far: %q", n[0].Log())
		}
		return nil
	})
	log := n[0].Log()
	for _, want := range []string{
		"fake weft daemon --node-name node1 --listen 172.30.0.1 --state-dir " + n[0].StateDir(),
		"--run-dir " + n[0].RunDir(), "--secret-file " + n[0].SecretFile(), "--peers 172.30.0.2",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	// The daemon runs in the node's netns.
	if !sameNetns(t, n[0].DaemonPID(), n[0].Netns) {
		t.Error("daemon is not in its node's netns")
	}
	secret, err := os.ReadFile(n[0].SecretFile())
	if err != nil || string(secret) != string(lab.Secret()) || len(secret) < 40 {
		t.Errorf("secret file %q (%v); lab secret %q", secret, err, lab.Secret())
	}

	first := n[0].DaemonPID()
	if err := n[0].RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	if n[0].DaemonPID() == first || !n[0].DaemonRunning() {
		t.Errorf("restart: pid %d -> %d, running %v", first, n[0].DaemonPID(), n[0].DaemonRunning())
	}
	if err := n[0].KillDaemon(); err != nil {
		t.Fatal(err)
	}
	if n[0].DaemonRunning() {
		t.Error("still running after kill -9")
	}
	if !strings.Contains(n[0].Log(), "signal: killed") {
		t.Errorf("log does not tell the kill:\n%s", n[0].Log())
	}
	if err := n[0].StopDaemon(); err != nil {
		t.Errorf("stop a stopped daemon: %v", err)
	}

	// Any long-running command, killed by Close at the latest.
	p, err := n[1].Spawn(ctx, "sh", "-c", "echo started; exec sleep 1000")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() error {
		if p.Output() != "started\n" {
			return fmt.Errorf("output %q", p.Output())
		}
		return nil
	})
	if !sameNetns(t, p.PID(), n[1].Netns) {
		t.Error("spawned process is not in its node's netns")
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Running() {
		t.Error("still running after Stop")
	}

	if _, err := n[1].Exec(ctx, "false"); err == nil {
		t.Error("Exec of false succeeded")
	}
	if out, err := n[1].Exec(ctx, "sh", "-c", "echo out; echo err >&2; exit 3"); err == nil || !strings.Contains(err.Error(), "err") || !strings.Contains(string(out), "out") {
		t.Errorf("Exec error %v, output %q; want both streams", err, out)
	}
}

func sameNetns(t *testing.T, pid int, netns string) bool {
	t.Helper()
	a, err1 := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid))
	b, err2 := os.Stat(netns)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat netns: %v %v", err1, err2)
	}
	return os.SameFile(a, b)
}

func TestLabOwnRunWireguard(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 2)

	if _, err := n[0].Exec(ctx, "sh", "-c", "echo one > /var/run/wireguard/mark"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(n[0].WireGuardDir(), "mark")); err != nil || string(b) != "one\n" {
		t.Errorf("node1's /run/wireguard is not its dir: %q %v", b, err)
	}
	if out, err := n[1].Exec(ctx, "ls", "-A", "/run/wireguard"); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("node2 sees %q (%v) in /run/wireguard; want it empty", out, err)
	}
	if _, err := os.Stat("/run/wireguard/mark"); err == nil {
		t.Error("the host sees node1's /run/wireguard")
	}

	// wg show reads the UAPI socket of its own node: serve a fake one in
	// node2's directory.
	sock := filepath.Join(n[1].WireGuardDir(), "weft.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveFakeUAPI(ln)
	out, err := n[1].Exec(ctx, "wg", "show", "weft")
	if err != nil {
		t.Fatalf("wg show in node2: %v", err)
	}
	if !strings.Contains(string(out), "listening port: 6784") {
		t.Errorf("wg show in node2:\n%s", out)
	}
	if out, err := n[0].Exec(ctx, "wg", "show", "weft"); err == nil {
		t.Errorf("wg show in node1 found node2's device:\n%s", out)
	}
}

// serveFakeUAPI answers WireGuard's UAPI "get" like an idle device.
func serveFakeUAPI(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if line == "\n" {
					io.WriteString(c, "listen_port=6784\nerrno=0\n\n")
					return
				}
			}
		}()
	}
}

func TestLabCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	ctx := labCtx(t)
	lab, err := netlab.New(ctx, netlab.Config{WeftBinary: fakeWeft(t)})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			lab.Close()
		}
	})
	n := addNodes(t, lab, 0, 2)
	s, err := lab.AddSite(true)
	if err != nil {
		t.Fatal(err)
	}
	n = append(n, addNodes(t, lab, s, 1)...)
	if err := n[0].StartDaemon(); err != nil {
		t.Fatal(err)
	}
	p, err := n[2].Spawn(ctx, "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	// A process started behind the lab's back, in a node's netns.
	stray := exec.Command("ip", "netns", "exec", filepath.Base(n[1].Netns), "sleep", "1000")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan struct{})
	go func() { stray.Wait(); close(strayDone) }()
	if err := lab.Cut(n[0], n[1]); err != nil {
		t.Fatal(err)
	}
	c, err := lab.Capture(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	pids := []int{n[0].DaemonPID(), p.PID()}
	if got := ours(lab.Prefix, netnsList(t)); len(got) != 5 { // ul, rt, 3 nodes
		t.Errorf("netns of the lab: %v", got)
	}
	if countMounts(t, lab.Prefix) == 0 {
		t.Error("no mounts of the lab seen; the test cannot see what Close removes")
	}

	closed = true
	if err := lab.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := lab.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if got := ours(lab.Prefix, netnsList(t)); len(got) != 0 {
		t.Errorf("netns left: %v", got)
	}
	if m := countMounts(t, lab.Prefix); m != 0 {
		t.Errorf("%d mounts of the lab left", m)
	}
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil {
			t.Errorf("pid %d survived", pid)
		}
	}
	select {
	case <-strayDone:
	case <-time.After(5 * time.Second):
		t.Error("a process started in a node by hand survived Close")
	}
	if _, err := os.Stat(lab.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab dir left: %v", err)
	}
	if _, err := os.Stat(filepath.Join("/run/weftlab", lab.Prefix+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registry entry left: %v", err)
	}
}

// netnsList is what `ip netns list` shows.
func netnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func ours(prefix string, names []string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix+"-") {
			out = append(out, n)
		}
	}
	return out
}

// countMounts counts the mounts in this mount namespace that belong to the
// lab with prefix. Other tests may mount things meanwhile, so only ours
// count.
func countMounts(t *testing.T, prefix string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), prefix)
}

func TestLabCleanAll(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	ctx := labCtx(t)
	// A lab whose owner "died": its registry names a process that is gone.
	dead, err := netlab.New(ctx, netlab.Config{WeftBinary: fakeWeft(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Close() })
	live := netlab.NewForTest(t, netlab.Config{})
	dn := addNodes(t, dead, 0, 2)
	ln := addNodes(t, live, 0, 1)[0]
	if err := dn[0].StartDaemon(); err != nil {
		t.Fatal(err)
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	reg := filepath.Join("/run/weftlab", dead.Prefix+".json")
	if err := os.WriteFile(reg, []byte(fmt.Sprintf(`{"pid":%d,"start":1,"dir":%q}`, gone.Process.Pid, dead.Dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	daemonPID := dn[0].DaemonPID()

	if err := netlab.CleanAll(nil); err != nil {
		t.Fatalf("CleanAll: %v", err)
	}
	if got := ours(dead.Prefix, netnsList(t)); len(got) != 0 {
		t.Errorf("netns of the dead lab left: %v", got)
	}
	if _, err := os.Stat(dead.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir of the dead lab left: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", daemonPID)); err == nil {
		t.Error("the dead lab's daemon survived")
	}
	if countMounts(t, dead.Prefix) != 0 {
		t.Error("mounts of the dead lab left")
	}
	// The live lab is untouched.
	if got := ours(live.Prefix, netnsList(t)); len(got) != 2 {
		t.Errorf("live lab's netns: %v", got)
	}
	reach(t, ctx, ln.Netns, ln.Addr)
	if _, err := os.Stat(live.Dir); err != nil {
		t.Errorf("live lab's dir: %v", err)
	}
	// Closing what CleanAll removed is fine.
	if err := dead.Close(); err != nil {
		t.Errorf("close after CleanAll: %v", err)
	}
}

func TestLabPrefixClash(t *testing.T) {
	t.Parallel()
	first := netlab.NewForTest(t, netlab.Config{})
	n := addNodes(t, first, 0, 1)[0]
	if _, err := netlab.New(context.Background(), netlab.Config{Prefix: first.Prefix}); err == nil {
		t.Fatal("a second lab with the same prefix was built")
	}
	if _, err := netlab.New(context.Background(), netlab.Config{Prefix: "not-ours"}); err == nil {
		t.Fatal("a lab without the weftlab- prefix was built")
	}
	// The first lab is untouched.
	if _, err := os.Stat(n.SecretFile()); err != nil {
		t.Errorf("first lab lost its files: %v", err)
	}
	if _, err := os.Stat(filepath.Join("/run/weftlab", first.Prefix+".json")); err != nil {
		t.Errorf("first lab lost its registry entry: %v", err)
	}
	reach(t, labCtx(t), n.Netns, n.Addr)
}

func init() {
	labHelpers["lab"] = labHelper
}

// labHelper builds a lab with a running "daemon" and waits to be killed:
// an interrupted test run.
func labHelper() {
	lab, err := netlab.New(context.Background(), netlab.Config{WeftBinary: os.Getenv("WEFT_LAB_FAKE_WEFT")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab helper:", err)
		os.Exit(1)
	}
	nodes, err := lab.AddNodes(0, 2)
	if err == nil {
		err = nodes[0].StartDaemon()
	}
	if err == nil {
		_, err = lab.AddSite(true)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab helper:", err)
		lab.Close()
		os.Exit(1)
	}
	fmt.Printf("%s %d\n", lab.Prefix, nodes[0].DaemonPID())
	select {}
}

func TestLabCleanAllAfterKill(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	ctx := labCtx(t)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WEFT_LAB_HELPER=lab", "WEFT_LAB_FAKE_WEFT="+fakeWeft(t))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var prefix string
	var daemonPID int
	if _, err := fmt.Fscan(stdout, &prefix, &daemonPID); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("lab helper: %v", err)
	}
	if got := ours(prefix, netnsList(t)); len(got) != 4 { // ul, rt, 2 nodes
		t.Errorf("netns of the helper's lab: %v", got)
	}
	// CleanAll leaves a lab alone while its owner lives.
	if err := netlab.CleanAll(nil); err != nil {
		t.Fatal(err)
	}
	if got := ours(prefix, netnsList(t)); len(got) != 4 {
		t.Errorf("CleanAll touched a live lab: %v", got)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", daemonPID)); err != nil {
		// A CleanAll of another test may have been quicker.
		t.Logf("the daemon is gone already: %v", err)
	}

	if err := netlab.CleanAll(nil); err != nil {
		t.Fatalf("CleanAll: %v", err)
	}
	if got := ours(prefix, netnsList(t)); len(got) != 0 {
		t.Errorf("netns left: %v", got)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", daemonPID)); err == nil {
		t.Error("the daemon survived")
	}
	if countMounts(t, prefix) != 0 {
		t.Error("mounts left")
	}
	if _, err := os.Stat(filepath.Join(os.TempDir(), prefix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab dir left: %v", err)
	}
	if _, err := os.Stat(filepath.Join("/run/weftlab", prefix+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registry entry left: %v", err)
	}
}
