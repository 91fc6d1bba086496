// Package netlab builds a whole weft cluster on one machine out of network
// namespaces, for `weft demo` and the end-to-end tests in tests/.
//
// A lab has one underlay namespace (PREFIX-ul) with a bridge per site, a
// namespace per node (PREFIX-nN) joined to its site's bridge by a veth, and,
// once there is more than one site, a router namespace (PREFIX-rt) with a leg
// (.254) on every site's bridge, optionally masquerading a site like a NAT
// gateway. Site S owns 172.30.S.0/24.
//
//	     PREFIX-ul                             PREFIX-rt
//	node1 ──┬── br0 172.30.0.0/24 ── r0 ─── s0 172.30.0.254 ┐ forwarding
//	node2 ──┘                                                │ (NAT of a
//	node3 ───── br1 172.30.1.0/24 ── r1 ─── s1 172.30.1.254 ┘  site optional)
//
// A site can also sit behind a NAT router of its own (AddNATSite), like a
// home or office network: PREFIX-rtS has a public address on site 0
// (172.30.0.(254-S)) and no port forward, so two such sites reach each
// other only by punching; its NAT is a port-restricted cone (each node's
// WireGuard port keeps one public port) or, with NATConfig.Symmetric, gives
// every flow a random port.
//
// Every process started in a node (the daemon, Exec, CNI plugins) runs in the
// node's network namespace and in a mount namespace of its own in which the
// node's directory is /run/wireguard, so userspace WireGuard's UAPI sockets of
// two nodes never collide; nothing of it is visible on the host.
//
// Everything is done in Go through netlink, nftables and packet sockets: the
// lab needs root and the weft binary, no `ip`, `nft` or `tcpdump`. Every lab
// has its own name prefix (weftlab-<6 hex digits>), so labs of several test
// packages run side by side; Close removes all of it, and CleanAll removes
// what interrupted runs left behind.
//
// A test on a lab:
//
//	lab := netlab.NewForTest(t, netlab.Config{}) // skips without root
//	nodes, err := lab.AddNodes(0, 3)
//	for _, n := range nodes {
//		err = n.StartDaemon("--peers", nodes[0].Addr.String(), "--ipalloc-init", "seed=node1,node2,node3")
//	}
//	err = nodes[0].WaitSocket(ctx)
//	pod, err := nodes[0].AddPod(ctx, netlab.PodConfig{Name: "web"}) // weft-cni via libcni
//	capture, err := lab.Capture(ctx)
//	rtt, err := pod.Ping(ctx, otherPod.IP())
//	for _, p := range capture.Stop() { ... } // only UDP to 6784 on the underlay?
//	err = lab.Cut(nodes[0], nodes[1]) // and lab.Heal
//	err = lab.LimitPath(nodes[0], nodes[2], 1280) // a VPN path: larger packets vanish
//	err = lab.SetLinkMTU(nodes[1], 1400)          // and lab.SetLoss(nodes[1], 5)
//	home, err := lab.AddNATSite(netlab.NATConfig{}) // or {Symmetric: true}
package netlab

import (
	"errors"
	"log/slog"
)

// NamePrefix starts the name of every network namespace, directory and
// registry entry a lab makes; CleanAll touches nothing else.
const NamePrefix = "weftlab-"

// Ports of weft on the underlay (see DESIGN.md).
const (
	GossipPort = 6783
	WGPort     = 6784
)

// ErrNotRoot is returned by New when the process is not root.
var ErrNotRoot = errors.New("netlab needs root (network namespaces, mounts, nftables)")

// ErrUnsupported is returned on systems other than Linux.
var ErrUnsupported = errors.New("netlab works only on Linux")

// Config of a lab. The zero value is a working lab.
type Config struct {
	// Prefix of every name the lab makes; must start with NamePrefix.
	// Default: NamePrefix + 6 random hex digits.
	Prefix string
	// WeftBinary is the weft binary run as daemon and, as weft-cni, as the
	// CNI plugin. Default: $WEFT_BINARY, else this executable.
	WeftBinary string
	// Dir is the base directory; the lab's files live in Dir/Prefix.
	// Default: os.TempDir().
	Dir string
	// Logger for what the lab does. Default: discard.
	Logger *slog.Logger
}

// PodConfig describes a pod to create on a node.
type PodConfig struct {
	Namespace string // Kubernetes namespace; default "default"
	Name      string // pod name; required
	// NetConfList is the CNI network configuration list; default: the
	// node's weft conflist (Node.NetConfList).
	NetConfList []byte
	IfName      string // default "eth0"
	// CapabilityArgs are handed to the plugins (e.g. "portMappings").
	CapabilityArgs map[string]any
}
