//go:build !linux

package kubelab

import (
	"context"
	"errors"
	"net"
	"os/exec"
)

var errNotLinux = errors.New("kubelab runs etcd and kube-apiserver on Linux only")

func inNetns(path string, fn func() error) error {
	if path != "" {
		return errNotLinux
	}
	return fn()
}

func loopbackUp(path string) error { return errNotLinux }

func netnsDialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return nil
}

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
	return port, err
}

func startIn(path string, cmd *exec.Cmd) error { return errNotLinux }
