//go:build tools

// Package containerd only pins github.com/containerd/containerd/v2 so that go
// mod tidy keeps everything cmd/containerd, cmd/containerd-shim-runc-v2 and
// cmd/ctr need; the binaries are built by make containerd into .cache/bin.
package containerd

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
