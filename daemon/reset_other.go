//go:build !linux

package daemon

import (
	"errors"
	"log/slog"
)

// ResetConfig says what `weft reset` removes.
type ResetConfig struct {
	Iface, StateDir, RunDir, CNIBinDir, CNIConfDir string
	Log                                            *slog.Logger
}

// Reset fails: weft only sets up Linux nodes.
func Reset(ResetConfig) error { return errors.New("weft reset runs on Linux only") }
