package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/daemon"
)

func addRunDir(cmd *cobra.Command, dir *string) {
	cmd.Flags().StringVar(dir, "run-dir", daemon.DefaultRunDir, "run directory of the daemon (its socket is RUN_DIR/weft.sock)")
}

func client(runDir string) *api.Client {
	return api.NewClient(filepath.Join(runDir, daemon.SocketName), 10*time.Second)
}

func newStatusCmd() *cobra.Command {
	var runDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:       "status [peers|ipam|policy]",
		Short:     "Show what the daemon on this node knows: peers and tunnels, address ranges, policies",
		Args:      cobra.MatchAll(cobra.MaximumNArgs(1), cobra.OnlyValidArgs),
		ValidArgs: []string{"peers", "ipam", "policy"},
		RunE: func(cmd *cobra.Command, args []string) error {
			what := ""
			if len(args) == 1 {
				what = args[0]
			}
			var raw json.RawMessage
			path := "/v1/status"
			if what != "" {
				path += "/" + what
			}
			if err := client(runDir).Do(cmd.Context(), http.MethodGet, path, nil, &raw); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			return printStatus(cmd.OutOrStdout(), what, raw)
		},
	}
	addRunDir(cmd, &runDir)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (stable, documented in the README)")
	return cmd
}

func newRmpeerCmd() *cobra.Command {
	var runDir string
	cmd := &cobra.Command{
		Use:   "rmpeer NODE",
		Short: "Reclaim the address ranges of a dead node for this node",
		Long: `Reclaim the address ranges of a node that is gone for good and hand them to
the node this runs on. Running it again, on this or any other node, is a no-op.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				Message string `json:"message"`
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			if err := client(runDir).Do(ctx, http.MethodPost, "/v1/rmpeer", map[string]string{"node": args[0]}, &out); err != nil {
				return err
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), out.Message)
			return err
		},
	}
	addRunDir(cmd, &runDir)
	return cmd
}
