package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Node is a machine of the cluster: a network namespace on a site's bridge,
// with its own directory (state/, run/, secret, daemon.log) and its own
// /run/wireguard for everything started in it.
type Node struct {
	Name  string     // node1, node2, ... unique in the lab
	Site  int        // index of its site
	Addr  netip.Addr // underlay address on eth0
	Netns string     // path of its network namespace
	Dir   string     // its directory

	lab  *Lab
	port string // its veth on the site bridge, in the underlay netns

	mu         sync.Mutex
	daemon     *Process
	daemonArgs []string
	conflist   []byte // NetConfList, rendered once
}

// StateDir is the daemon's --state-dir.
func (n *Node) StateDir() string { return filepath.Join(n.Dir, "state") }

// RunDir is the daemon's --run-dir.
func (n *Node) RunDir() string { return filepath.Join(n.Dir, "run") }

// SocketPath is the daemon's API socket.
func (n *Node) SocketPath() string { return filepath.Join(n.RunDir(), "weft.sock") }

// SecretFile is the daemon's --secret-file.
func (n *Node) SecretFile() string { return filepath.Join(n.Dir, "secret") }

// LogFile collects the daemon's stdout and stderr, run after run.
func (n *Node) LogFile() string { return filepath.Join(n.Dir, "daemon.log") }

// WireGuardDir is what processes of this node see as /run/wireguard.
func (n *Node) WireGuardDir() string { return n.wgDir() }

func (n *Node) wgDir() string       { return filepath.Join(n.Dir, "wireguard") }
func (n *Node) cniCacheDir() string { return filepath.Join(n.Dir, "cni-cache") }

// Port is the name of the node's veth on its site bridge in the underlay
// namespace.
func (n *Node) Port() string { return n.port }

func (n *Node) place() place { return place{Netns: n.Netns, WGDir: n.wgDir()} }

// SetSecret gives this node a cluster secret of its own (to test a node
// with the wrong secret); it takes effect at the next start of the daemon.
func (n *Node) SetSecret(secret []byte) error {
	if err := os.WriteFile(n.SecretFile(), secret, 0o600); err != nil {
		return fmt.Errorf("write secret of %s: %w", n.Name, err)
	}
	return nil
}

// Exec runs a command inside the node and returns its combined output; the
// error includes the output.
func (n *Node) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return execIn(ctx, n.lab, n.place(), n.Name, name, args...)
}

// Command returns an unstarted command to run inside the node with
// StartCmd; set its Stdin, Stdout, Env... as with exec.Cmd.
func (n *Node) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, name, args...)
}

// StartCmd starts cmd inside the node. The process is killed at the latest
// by Lab.Close.
func (n *Node) StartCmd(cmd *exec.Cmd) (*Process, error) {
	return startProcess(n.lab, cmd, n.place(), nil)
}

// Spawn starts a long-running command inside the node (iperf3 -s, nc -l)
// and collects its combined output (Process.Output). It is killed when ctx
// ends or by Lab.Close.
func (n *Node) Spawn(ctx context.Context, name string, args ...string) (*Process, error) {
	return spawnIn(ctx, n.lab, n.place(), name, args...)
}

// DaemonArgs are the arguments of `weft daemon` on this node, with extra
// appended.
func (n *Node) DaemonArgs(extra ...string) []string {
	args := []string{"daemon",
		"--node-name", n.Name,
		"--listen", n.Addr.String(),
		"--state-dir", n.StateDir(),
		"--run-dir", n.RunDir(),
		"--secret-file", n.SecretFile(),
	}
	return append(args, extra...)
}

// StartDaemon starts `weft daemon` inside the node (DaemonArgs), with
// stdout and stderr appended to LogFile.
func (n *Node) StartDaemon(extra ...string) error {
	return n.startDaemon(n.DaemonArgs(extra...))
}

// StartSuccessor starts a new daemon with the arguments of the last one
// while that one may still run, as an upgrade does: the new daemon takes
// the running one's data path over (the daemon/handoff package) and the
// old one exits by itself. Daemon() is the new one from then on; the old
// one's process is returned, to wait for.
func (n *Node) StartSuccessor() (old *Process, err error) {
	n.mu.Lock()
	args, old := n.daemonArgs, n.daemon
	n.mu.Unlock()
	if args == nil {
		return nil, fmt.Errorf("the daemon of %s was never started", n.Name)
	}
	return old, n.start(args, true)
}

func (n *Node) startDaemon(args []string) error { return n.start(args, false) }

func (n *Node) start(args []string, successor bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !successor && n.daemon != nil && n.daemon.Running() {
		return fmt.Errorf("the daemon of %s is already running (pid %d)", n.Name, n.daemon.PID())
	}
	logf, err := os.OpenFile(n.LogFile(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", n.Name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- netlab %s: start %s %s\n", time.Now().Format(time.RFC3339Nano), n.lab.weft, shellJoin(args))
	cmd := exec.Command(n.lab.weft, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = cleanEnv()
	cmd.Dir = n.Dir
	onExit := func(err error) {
		if f, ferr := os.OpenFile(n.LogFile(), os.O_WRONLY|os.O_APPEND, 0); ferr == nil {
			fmt.Fprintf(f, "--- netlab %s: daemon exited: %v\n", time.Now().Format(time.RFC3339Nano), exitString(err))
			f.Close()
		}
	}
	p, err := startProcess(n.lab, cmd, n.place(), onExit)
	if err != nil {
		return fmt.Errorf("start daemon of %s: %w", n.Name, err)
	}
	n.daemon = p
	n.daemonArgs = args
	n.lab.log.Info("daemon started", "node", n.Name, "pid", p.PID())
	return nil
}

// shellJoin quotes args for a log line a person can paste.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = a
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`") {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

// cleanEnv is this process's environment without WEFT_* variables, so the
// daemon's configuration is exactly its arguments.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WEFT_") {
			env = append(env, kv)
		}
	}
	return env
}

func exitString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// StopDaemon stops the daemon with SIGTERM and, after 10 s, SIGKILL. Not
// running is not an error.
func (n *Node) StopDaemon() error {
	p := n.daemonProc()
	if p == nil {
		return nil
	}
	return p.Stop(10 * time.Second)
}

// KillDaemon kills the daemon with SIGKILL, as kill -9 would, and waits
// until it is gone.
func (n *Node) KillDaemon() error {
	p := n.daemonProc()
	if p == nil {
		return nil
	}
	p.Kill()
	p.waitDone()
	return nil
}

// RestartDaemon stops the daemon (SIGTERM) and starts it with the same
// arguments as last time.
func (n *Node) RestartDaemon() error {
	n.mu.Lock()
	args := n.daemonArgs
	n.mu.Unlock()
	if args == nil {
		return fmt.Errorf("the daemon of %s was never started", n.Name)
	}
	if err := n.StopDaemon(); err != nil {
		return err
	}
	return n.startDaemon(args)
}

func (n *Node) daemonProc() *Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.daemon
}

// Daemon is the daemon's process (the latest one), nil if never started.
func (n *Node) Daemon() *Process { return n.daemonProc() }

// DaemonRunning reports whether the daemon is running.
func (n *Node) DaemonRunning() bool {
	p := n.daemonProc()
	return p != nil && p.Running()
}

// DaemonPID is the pid of the latest daemon, 0 if never started.
func (n *Node) DaemonPID() int {
	if p := n.daemonProc(); p != nil {
		return p.PID()
	}
	return 0
}

// Log returns the whole daemon log of the node.
func (n *Node) Log() string {
	b, _ := os.ReadFile(n.LogFile())
	return string(b)
}

// LogTail returns the last lines of the daemon log.
func (n *Node) LogTail(lines int) string {
	all := strings.Split(strings.TrimRight(n.Log(), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// WaitSocket waits until the daemon's API socket accepts connections. It
// gives up early when the daemon exits.
func (n *Node) WaitSocket(ctx context.Context) error {
	for {
		c, err := net.DialTimeout("unix", n.SocketPath(), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if !n.DaemonRunning() {
			return fmt.Errorf("the daemon of %s is not running; log:\n%s", n.Name, n.LogTail(20))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", n.SocketPath(), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Ping sends one ICMP echo from the node to dst and returns the round trip.
func (n *Node) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	return Ping(ctx, n.Netns, dst, time.Second)
}

// Process is a process the lab started in a node or pod.
type Process struct {
	Cmd *exec.Cmd

	lab    *Lab
	out    *syncBuffer
	done   chan struct{}
	err    error
	onExit func(error)
}

func startProcess(l *Lab, cmd *exec.Cmd, pl place, onExit func(error)) (*Process, error) {
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 2 * time.Second
	}
	p := &Process{Cmd: cmd, lab: l, done: make(chan struct{}), onExit: onExit}
	// Holding the lab's lock from start to track, Close cannot miss it.
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab is closed")
	}
	err := start(cmd, pl)
	if err == nil {
		l.procs[p] = struct{}{}
	}
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		if p.onExit != nil {
			p.onExit(p.err)
		}
		close(p.done)
		l.untrack(p)
	}()
	return p, nil
}

func spawnIn(ctx context.Context, l *Lab, pl place, name string, args ...string) (*Process, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	buf := &syncBuffer{}
	cmd.Stdout = buf
	cmd.Stderr = buf
	p, err := startProcess(l, cmd, pl, nil)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.out = buf
	return p, nil
}

func execIn(ctx context.Context, l *Lab, pl place, where, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	cmd.WaitDelay = 2 * time.Second
	if err := start(cmd, pl); err != nil {
		return nil, fmt.Errorf("%s in %s: %w", name, where, err)
	}
	if err := cmd.Wait(); err != nil {
		return buf.Bytes(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), where, err, strings.TrimSpace(buf.String()))
	}
	return buf.Bytes(), nil
}

// PID of the process.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns how it ended.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

func (p *Process) waitDone() { <-p.done }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error {
	if !p.Running() {
		return nil
	}
	err := p.Cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// Kill sends SIGKILL; it does not wait.
func (p *Process) Kill() { _ = p.Signal(syscall.SIGKILL) }

// Stop sends SIGTERM, waits up to timeout, then kills.
func (p *Process) Stop(timeout time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop pid %d: %w", p.PID(), err)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Kill()
		<-p.done
	}
	return nil
}

// Output is what the process wrote so far (Spawn only).
func (p *Process) Output() string {
	if p.out == nil {
		return ""
	}
	return p.out.String()
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Listen opens a listener inside the node, e.g. Listen("tcp", ":8080").
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	return Listen(n.Netns, network, addr)
}

// Dial connects from inside the node.
func (n *Node) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return Dial(ctx, n.Netns, network, addr)
}

// ListenPacket opens a packet socket inside the node, e.g.
// ListenPacket("udp", ":9000").
func (n *Node) ListenPacket(network, addr string) (net.PacketConn, error) {
	return ListenPacket(n.Netns, network, addr)
}
