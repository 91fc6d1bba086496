package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

func newResetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "reset",
		Short: "Remove everything weft set up on this node: tunnel, routes, rules, state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return errors.New("reset is not built yet")
		},
	}
}
