package cli

import (
	"github.com/spf13/cobra"

	"github.com/weftnet/weft/daemon"
)

func newResetCmd() *cobra.Command {
	cfg := daemon.ResetConfig{}
	cmd := &cobra.Command{
		Use:   "reset",
		Short: "Remove everything weft set up on this node: tunnel, routes, rules, pod links, CNI files, state",
		Long: `Remove everything weft set up on this node: the tunnel device, weft's routes,
its nftables table, the host ends of pod veths, the CNI plugin and its config,
and the state and run directories. Stop the daemon first (delete the
DaemonSet). Pods still running on the node lose their network.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger("info")
			if err != nil {
				return err
			}
			cfg.Log = log
			return daemon.Reset(cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Iface, "iface", daemon.DefaultIface, "the tunnel device")
	f.StringVar(&cfg.StateDir, "state-dir", daemon.DefaultStateDir, "the daemon's state directory")
	f.StringVar(&cfg.RunDir, "run-dir", daemon.DefaultRunDir, "the daemon's run directory")
	f.StringVar(&cfg.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "where weft-cni was installed")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "where 10-weft.conflist was written")
	return cmd
}
