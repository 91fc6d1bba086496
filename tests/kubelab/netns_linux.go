package kubelab

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
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
// killed when the thread that started it ends, so a test binary that dies
// does not leak servers.
func startIn(path string, cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return inNetns(path, cmd.Start)
}
