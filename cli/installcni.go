package cli

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/cniplugin"
	"github.com/weftnet/weft/cniplugin/install"
)

func newInstallCNICmd() *cobra.Command {
	var cfg install.Config
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install the CNI plugin binary and the weft network config on this node",
		Long: `install-cni copies this binary to BIN_DIR/weft-cni and writes
CONF_DIR/` + cniplugin.ConflistName + `, both atomically, so that a container runtime never
runs or reads half a file. The network config chains portmap (when it is in
BIN_DIR) after weft-cni and offers CNI 1.1.0 only when every plugin of the
chain supports it. Running it again is safe.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			res, err := install.Install(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("install the CNI plugin: %w", err)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "installed %s\nwrote %s (cniVersions %v, chained %v)\n",
				res.Binary, res.Conflist, res.CNIVersions, res.Chained)
			return err
		},
	}
	cmd.Flags().StringVar(&cfg.BinDir, "bin-dir", install.DefaultBinDir, "where the runtime looks for CNI plugins")
	cmd.Flags().StringVar(&cfg.ConfDir, "conf-dir", install.DefaultConfDir, "where the runtime looks for network configs")
	cmd.Flags().StringVar(&cfg.Socket, "socket", cniplugin.DefaultSocket, "the weft daemon's API socket, written into the network config")
	cmd.Flags().IntVar(&cfg.MTU, "mtu", 0, "MTU of pod interfaces written into the network config (0: the daemon's tunnel MTU)")
	return cmd
}
