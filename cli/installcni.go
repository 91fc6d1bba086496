package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

func newInstallCNICmd() *cobra.Command {
	var binDir, confDir string
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install the CNI plugin binary and the weft network config on this node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return errors.New("install-cni is not built yet")
		},
	}
	cmd.Flags().StringVar(&binDir, "bin-dir", "/opt/cni/bin", "where the runtime looks for CNI plugins")
	cmd.Flags().StringVar(&confDir, "conf-dir", "/etc/cni/net.d", "where the runtime looks for network configs")
	return cmd
}
