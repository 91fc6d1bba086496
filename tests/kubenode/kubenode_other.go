//go:build !linux

package kubenode

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/weftnet/weft/netlab"
)

// Config of a node (see the Linux version).
type Config struct {
	Node         *netlab.Node
	Kubeconfig   string
	Binaries     Binaries
	WeftBinary   string
	Images       []string
	SandboxImage string
	MaxPods      int
	StartTimeout time.Duration
	Logger       *slog.Logger
}

// Node is a running containerd and kubelet; only on Linux.
type Node struct{}

// ErrUnsupported is returned by Start on systems other than Linux.
var ErrUnsupported = errors.New("kubenode works only on Linux")

// Start fails: kubenode works only on Linux.
func Start(context.Context, Config) (*Node, error) { return nil, ErrUnsupported }

func (n *Node) Name() string                 { return "" }
func (n *Node) Dir() string                  { return "" }
func (n *Node) CgroupRoot() string           { return "" }
func (n *Node) ContainerdSocket() string     { return "" }
func (n *Node) ContainerdLogTail(int) string { return "" }
func (n *Node) KubeletLogTail(int) string    { return "" }
func (n *Node) KubeletRunning() bool         { return false }
func (n *Node) ContainerdRunning() bool      { return false }
func (n *Node) Close() error                 { return nil }

// CleanStale does nothing: no node runs on this system.
func CleanStale() error { return nil }
