//go:build !linux

package netlab

import (
	"context"
	"log/slog"
	"net/netip"
)

// On systems other than Linux only the surface the weft command line uses
// exists, and New fails with ErrUnsupported.

// Lab is a cluster on one machine (Linux only).
type Lab struct {
	Prefix   string
	Dir      string
	Underlay string
}

// Node is a machine of the cluster (Linux only).
type Node struct {
	Name  string
	Site  int
	Addr  netip.Addr
	Netns string
	Dir   string
}

// New fails: netlab works only on Linux.
func New(context.Context, Config) (*Lab, error) { return nil, ErrUnsupported }

// CleanAll fails: netlab works only on Linux.
func CleanAll(*slog.Logger) error { return ErrUnsupported }

func (l *Lab) Close() error                      { return nil }
func (l *Lab) Nodes() []*Node                    { return nil }
func (l *Lab) AddNode(int) (*Node, error)        { return nil, ErrUnsupported }
func (l *Lab) AddSite(bool) (int, error)         { return 0, ErrUnsupported }
func (l *Lab) WeftBinary() string                { return "" }
func (n *Node) StartDaemon(...string) error      { return ErrUnsupported }
func (n *Node) StopDaemon() error                { return nil }
func (n *Node) DaemonRunning() bool              { return false }
func (n *Node) DaemonPID() int                   { return 0 }
func (n *Node) WaitSocket(context.Context) error { return ErrUnsupported }
func (n *Node) SocketPath() string               { return "" }
func (n *Node) RunDir() string                   { return "" }
func (n *Node) LogFile() string                  { return "" }
func (n *Node) Log() string                      { return "" }
func (n *Node) LogTail(int) string               { return "" }
