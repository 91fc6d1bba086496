package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/daemon"
)

func newDaemonCmd() *cobra.Command {
	cfg := daemon.DefaultConfig()
	var podCIDR, peers, logLevel string
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the weft node agent (what the DaemonSet runs on every node)",
		Long: `Run the weft node agent: join the gossip mesh, keep a WireGuard tunnel to every
peer, allocate pod addresses, serve the CNI plugin on RUN_DIR/weft.sock and
enforce NetworkPolicy. Every flag can also be set with WEFT_<FLAG> (upper case,
'-' as '_'); a flag on the command line wins.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), os.LookupEnv); err != nil {
				return err
			}
			cidrs, err := daemon.ParsePodCIDRs(podCIDR)
			if err != nil {
				return err
			}
			cfg.SetPodCIDRs(cidrs)
			cfg.Peers = splitList(peers)
			if cfg.NodeName == "" {
				if cfg.NodeName, err = os.Hostname(); err != nil {
					return fmt.Errorf("no --node-name and no hostname: %w", err)
				}
			}
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			err = daemon.Run(cmd.Context(), cfg, log)
			if errors.Is(err, daemon.ErrHandedOver) {
				if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
					return nil
				}
				// In a container an exit is restarted by the kubelet, and
				// the restarted daemon would take the data path back: idle
				// until the pod is deleted.
				log.Info("data path handed over; idling until this pod is stopped")
				<-cmd.Context().Done()
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeName, "node-name", "", "name of this node in the mesh (default: the hostname)")
	f.StringVar(&cfg.Listen, "listen", "", "underlay address to listen on (default: the address of the default route's interface)")
	f.StringVar(&cfg.AdvertiseEndpoint, "advertise-endpoint", "", "host:port that peers dial for WireGuard, for NAT and clusters across clouds (default: listen address and --wg-port)")
	f.StringVar(&peers, "peers", "", "comma-separated seeds to join (host or host:port)")
	f.StringVar(&cfg.SecretFile, "secret-file", "", "file holding the cluster secret, the same on every node")
	f.BoolVar(&cfg.Insecure, "insecure", false, "run without a cluster secret: gossip in clear and no WireGuard preshared key")
	f.StringVar(&podCIDR, "pod-cidr", daemon.DefaultPodCIDR, "the cluster's pod address range: one IPv4 or IPv6 prefix, or an IPv4 and an IPv6 prefix separated by a comma (dual stack)")
	f.StringVar(&cfg.IPAllocInit, "ipalloc-init", "", "how the address ring is seeded: seed=NODE1,NODE2,... (the same list on every node) or kube")
	f.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory for the WireGuard key and allocator state")
	f.StringVar(&cfg.RunDir, "run-dir", cfg.RunDir, "directory for the local API socket weft.sock")
	f.StringVar(&cfg.WGMode, "wg-mode", cfg.WGMode, "WireGuard implementation: auto, kernel or userspace")
	f.StringVar(&cfg.UserspaceIO, "userspace-io", cfg.UserspaceIO, "userspace WireGuard's reads and writes of the TUN and UDP sockets: weft (without copying packets in user space) or wireguard-go (its own code, slower)")
	f.StringVar(&cfg.Iface, "iface", cfg.Iface, "name of the tunnel device")
	f.IntVar(&cfg.GossipPort, "gossip-port", cfg.GossipPort, "TCP and UDP port of the gossip")
	f.IntVar(&cfg.WGPort, "wg-port", cfg.WGPort, "UDP port of WireGuard")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", cfg.MetricsAddr, "address of /metrics, /healthz and /readyz; without a host (:6782), the --listen address and loopback; 0.0.0.0:6782 for every interface; empty: off")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig of the Kubernetes API (default: in-cluster config when in a pod)")
	f.IntVar(&cfg.MTU, "mtu", 0, "MTU of the tunnel and pods (0: the underlay's MTU minus 80)")
	f.BoolVar(&cfg.MSSClamp, "mss-clamp", cfg.MSSClamp, "lower the TCP MSS to and from each peer whose measured path MTU is below the tunnel's (false: measure and show only)")
	f.DurationVar(&cfg.ReapTime, "reap-time", cfg.ReapTime, "how long a peer that stopped answering keeps its tunnel before it is removed (rmpeer removes it at once)")
	f.DurationVar(&cfg.ProbeInterval, "probe-interval", cfg.ProbeInterval, "how often the mesh probes a member and each direct path is probed; longer means fewer false alarms on overloaded nodes and slower detection of dead nodes and cut paths")
	f.BoolVar(&cfg.UseExternalIP, "use-external-ip", false, "with Kubernetes, join other Nodes at their ExternalIP (clusters across clouds) instead of their InternalIP")
	f.BoolVar(&cfg.InstallCNI, "install-cni", false, "install the weft-cni plugin and 10-weft.conflist at start (the DaemonSet does)")
	f.StringVar(&cfg.CNIBinDir, "cni-bin-dir", cfg.CNIBinDir, "where --install-cni puts the plugin")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", cfg.CNIConfDir, "where --install-cni writes the network config")
	f.DurationVar(&cfg.HandoffWait, "handoff-wait", 0, "when told to stop, wait this long for a new daemon to take the live tunnel over (a new daemon started while this one runs takes it over at once)")
	f.DurationVar(&cfg.KeyRotation, "key-rotation", 0, "rotate this node's WireGuard key whenever it is older than this, without losing packets (0: only when weft rotate-key is run)")
	f.DurationVar(&cfg.SecretOverlap, "secret-overlap", cfg.SecretOverlap, "how long the old cluster secret is still accepted after a new one appears in --secret-file or the Secret; nodes that did not get the new one by then are out")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	annotateEnv(f)
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
