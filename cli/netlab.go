package cli

import (
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/netlab"
)

// newNetlabCleanCmd is `weft netlab-clean` (make clean-netns): remove what
// interrupted demos and tests left behind.
func newNetlabCleanCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "netlab-clean",
		Short:  "Remove network namespaces, processes, mounts and files left by interrupted demos and tests (needs root)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			return netlab.CleanAll(log)
		},
	}
}
