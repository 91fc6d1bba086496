//go:build !linux

package daemon

import (
	"context"
	"errors"
	"log/slog"
)

// Run fails: the weft daemon programs the Linux kernel.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	return errors.New("the weft daemon runs on Linux only")
}
