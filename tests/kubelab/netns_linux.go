package kubelab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"sync"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNetns runs fn on an OS thread inside the network namespace at path, or
// on the caller's thread when path is empty. A process fn starts inherits
// that namespace; a socket fn creates keeps it.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	netns, err := ns.GetNS(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error { return fn() })
}

// loopbackUp brings up lo of the network namespace at path, which a fresh
// namespace has down; etcd listens there.
func loopbackUp(path string) error {
	return inNetns(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring lo up: %w", err)
		}
		return nil
	})
}

// netnsDialer returns a dial function whose sockets live in the network
// namespace at path, so clients in the test process reach servers bound
// inside it; nil (the default dialer) when path is empty.
func netnsDialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if path == "" {
		return nil
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := inNetns(path, func() error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// freePort asks the kernel of the namespace at path for a free TCP port on
// host. Another process may take it before ours binds it; the lab's ports
// are picked right before use to keep that window small.
func freePort(path, host string) (int, error) {
	var port int
	err := inNetns(path, func() error {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	})
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", host, err)
	}
	return port, nil
}

// startIn starts cmd inside the network namespace at path. The process is
// killed when the thread that started it ends (Pdeathsig), so a test binary
// that dies does not leak servers. That thread must therefore live as long
// as the test binary: every server is started from one goroutine locked to
// its thread for good. A thread from Go's pool could be thrown away later
// (a goroutine that exits while locked to it, as netlab's do), and the
// servers would die with it.
func startIn(path string, cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	starterOnce.Do(func() {
		starts = make(chan startReq)
		go starter()
	})
	req := startReq{path: path, cmd: cmd, err: make(chan error, 1)}
	starts <- req
	return <-req.err
}

type startReq struct {
	path string
	cmd  *exec.Cmd
	err  chan error
}

var (
	starterOnce sync.Once
	starts      chan startReq
)

// starter starts processes on its own thread, entering and leaving the
// requested network namespace around each start. It never unlocks.
func starter() {
	runtime.LockOSThread()
	home, err := netns.Get()
	if err != nil {
		err = fmt.Errorf("open this thread's network namespace: %w", err)
	}
	for req := range starts {
		if err != nil {
			req.err <- err
			continue
		}
		var stuck error
		stuck, err = startOnThread(home, req.path, req.cmd), nil
		if errors.Is(stuck, errStuck) {
			// Stop serving rather than start the next server in the
			// wrong namespace.
			err = stuck
		}
		req.err <- stuck
	}
}

var errStuck = errors.New("kubelab: cannot return to the original network namespace")

func startOnThread(home netns.NsHandle, path string, cmd *exec.Cmd) error {
	if path == "" {
		return cmd.Start()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	startErr := cmd.Start()
	if err := netns.Set(home); err != nil {
		if startErr == nil && cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
		return fmt.Errorf("%w: %v", errStuck, err)
	}
	return startErr
}
