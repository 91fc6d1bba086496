// Package daemon is the node agent: it wires mesh, crypto, ipalloc and policy
// together, reconciles the kernel with the desired state, and serves the
// local API socket, health and metrics.
package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"
)

// Config is everything `weft daemon` is told by flags or WEFT_* variables.
type Config struct {
	NodeName          string        // --node-name; default the hostname
	Listen            string        // --listen: underlay address; default the default route's interface address
	AdvertiseEndpoint string        // --advertise-endpoint host:port peers dial; default Listen:WGPort
	Peers             []string      // --peers: seeds, host or host:port (gossip port assumed)
	SecretFile        string        // --secret-file: the cluster secret
	Insecure          bool          // --insecure: run without a secret (unencrypted gossip, no PSK)
	PodCIDR           netip.Prefix  // --pod-cidr's first range (IPv4, or IPv6 in an IPv6-only cluster), the address ring's; default 10.32.0.0/12
	PodCIDR6          netip.Prefix  // --pod-cidr's IPv6 range beside the IPv4 PodCIDR (dual stack); invalid otherwise
	IPAllocInit       string        // --ipalloc-init: "seed=NODE1,NODE2,..." or "kube"
	StateDir          string        // --state-dir; default /var/lib/weft
	RunDir            string        // --run-dir; default /run/weft (API socket RUN_DIR/weft.sock)
	WGMode            string        // --wg-mode auto|kernel|userspace
	UserspaceIO       string        // --userspace-io weft|wireguard-go: whose code reads and writes the userspace tunnel's TUN and UDP sockets (crypto.TunnelConfig.WireGuardGoIO)
	Iface             string        // --iface; default weft
	GossipPort        int           // --gossip-port; default 6783
	WGPort            int           // --wg-port; default 6784
	MetricsAddr       string        // --metrics-addr; default :6782 (no host: the underlay address and loopback, see healthAddrs)
	Kubeconfig        string        // --kubeconfig
	MTU               int           // --mtu; 0 = underlay MTU - 80
	ResyncInterval    time.Duration // periodic full reconcile
	ReapTime          time.Duration // how long a dead peer keeps its tunnel
	// ProbeInterval (--probe-interval, default 1 s) paces failure
	// detection: the mesh probes one member per interval (ack timeout
	// half of it) and every direct path is probed once per interval (a
	// quarter of it when in doubt, a probe lost after one interval).
	// Longer: fewer false alarms on overloaded nodes or slow links,
	// slower detection of dead nodes and cut paths, in proportion.
	ProbeInterval time.Duration
	InstallCNI    bool          // --install-cni: install weft-cni and the conflist at start
	CNIBinDir     string        // --cni-bin-dir; default /opt/cni/bin
	CNIConfDir    string        // --cni-conf-dir; default /etc/cni/net.d
	SweepInterval time.Duration // how often allocations of vanished pods are looked for
	UseExternalIP bool          // --use-external-ip: seeds are Nodes' ExternalIPs (clusters across clouds)
	// MSSClamp (--mss-clamp, default true) lowers the TCP MSS of traffic
	// to and from a peer whose measured path MTU is below the tunnel's.
	// Off, path MTUs are still measured and shown, nothing is clamped.
	MSSClamp bool
	// HandoffWait (--handoff-wait, default 0) is how long a daemon told to
	// stop waits for a new daemon to take its data path over before it
	// exits without one. A new daemon started while the old one runs takes
	// over at once whatever this is; see the daemon/handoff package.
	HandoffWait time.Duration
	// KeyRotation (--key-rotation, default 0: off) rotates the node's
	// WireGuard key whenever it is older than this; `weft rotate-key`
	// rotates it at once.
	KeyRotation time.Duration
	// SecretOverlap (--secret-overlap, default 10 min) is how long a node
	// holds the old cluster secret beside a new one: nodes still on only
	// the old one keep working until it ends, and are out after.
	SecretOverlap time.Duration
}

// ErrHandedOver is what Run returns when the daemon stopped because a
// successor took its data path over. The caller decides whether to exit (a
// plain process) or to idle until it is told to stop (a container, which
// the kubelet would restart, and whose restart would take the data path
// back).
var ErrHandedOver = errors.New("the data path was handed over to a new daemon")

// Defaults of the documented flags.
const (
	DefaultPodCIDR     = "10.32.0.0/12"
	DefaultStateDir    = "/var/lib/weft"
	DefaultRunDir      = "/run/weft"
	DefaultIface       = "weft"
	DefaultGossipPort  = 6783
	DefaultWGPort      = 6784
	DefaultMetricsAddr = ":6782"
	SocketName         = "weft.sock"
	// DefaultSecretOverlap is the default of --secret-overlap.
	DefaultSecretOverlap = 10 * time.Minute
)

// DefaultConfig returns a Config with every documented default filled in.
func DefaultConfig() Config {
	return Config{
		PodCIDR:        netip.MustParsePrefix(DefaultPodCIDR),
		StateDir:       DefaultStateDir,
		RunDir:         DefaultRunDir,
		WGMode:         "auto",
		UserspaceIO:    "weft",
		Iface:          DefaultIface,
		GossipPort:     DefaultGossipPort,
		WGPort:         DefaultWGPort,
		MetricsAddr:    DefaultMetricsAddr,
		ResyncInterval: 30 * time.Second,
		ReapTime:       5 * time.Minute,
		ProbeInterval:  time.Second,
		CNIBinDir:      "/opt/cni/bin",
		CNIConfDir:     "/etc/cni/net.d",
		SweepInterval:  10 * time.Second,
		MSSClamp:       true,
		SecretOverlap:  DefaultSecretOverlap,
	}
}

// SocketPath is the local API socket under RunDir.
func (c Config) SocketPath() string { return filepath.Join(c.RunDir, SocketName) }

// Validate reports the first thing wrong with c, in words an operator can act on.
func (c Config) Validate() error {
	if c.UserspaceIO != "weft" && c.UserspaceIO != "wireguard-go" {
		return fmt.Errorf("--userspace-io %q: want weft or wireguard-go", c.UserspaceIO)
	}
	switch c.WGMode {
	case "auto", "kernel", "userspace":
	default:
		return fmt.Errorf("--wg-mode %q: want auto, kernel or userspace", c.WGMode)
	}
	if c.NodeName == "" {
		return fmt.Errorf("node name is empty: set --node-name")
	}
	if err := c.validatePodCIDRs(); err != nil {
		return err
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"--gossip-port", c.GossipPort}, {"--wg-port", c.WGPort}} {
		if p.v <= 0 || p.v > 65535 {
			return fmt.Errorf("%s %d: want a port between 1 and 65535", p.name, p.v)
		}
	}
	if c.ProbeInterval != 0 && (c.ProbeInterval < 100*time.Millisecond || c.ProbeInterval > time.Minute) {
		return fmt.Errorf("--probe-interval %v: want between 100ms and 1m (default 1s)", c.ProbeInterval)
	}
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 65535) {
		return fmt.Errorf("--mtu %d: want 0 (automatic) or 1280..65535", c.MTU)
	}
	return nil
}

// ErrNoSecret is returned when the daemon has neither a secret nor --insecure
// (with Kubernetes, the daemon makes one itself).
var ErrNoSecret = fmt.Errorf("no cluster secret: create one with `head -c 32 /dev/urandom | base64 > /etc/weft/secret` " +
	"(the same file on every node), pass it with --secret-file, or run with --insecure to go without encryption; " +
	"with Kubernetes (--kubeconfig, or in a pod) the daemon keeps one in the Secret kube-system/weft")
