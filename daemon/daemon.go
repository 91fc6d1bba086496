package daemon

import (
	"context"
	"errors"
	"log/slog"
)

// Run runs the node agent until ctx is done.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	_ = ctx
	_ = log
	return errors.New("the weft daemon is not built yet")
}
