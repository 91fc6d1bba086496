// Package cniplugin is the CNI plugin that container runtimes call as
// weft-cni, and its installer (Install, behind `weft install-cni`).
//
// The plugin keeps no state of its own. Addresses come from the weft daemon
// over its local socket (api.Client, config key "socket"): ADD asks for an
// allocation keyed by container ID and interface name, DEL releases it, CHECK
// and GC compare with what the daemon holds, STATUS asks whether the daemon
// is ready. Every link the plugin creates has a name derived from the
// attachment (HostVethName), so DEL and GC find it without state.
//
// # Routed pods
//
// Pods are routed, not bridged. Each pod gets one veth pair:
//
//	pod netns                                node netns
//	eth0 10.32.0.5/32  <==== veth ====>  wv1f2e3d4c5b6a7 (no address)
//	169.254.1.1 dev eth0 scope link      10.32.0.5 dev wv1f2e3d4c5b6a7 scope link
//	default via 169.254.1.1 dev eth0     proxy_arp=1, forwarding=1, rp_filter=2, proxy_delay=0
//	neigh 169.254.1.1 lladdr <host end's MAC> PERMANENT
//
// The pod holds its address as a /32 and routes everything to the
// link-local gateway from the allocation (169.254.1.1), which is on-link on
// eth0. Nothing on the node owns that address: the host end answers the
// pod's ARP for it by proxy ARP, and the plugin also sets a permanent
// neighbour entry in the pod so that the pod never depends on the node's
// routing table for that answer. The node reaches the pod through the host
// route to the /32 on the host end. Pods on one node therefore talk through
// the node's routing table, pods on other nodes through the routes the
// daemon installs via the tunnel device, and no pod sees a NAT'ed address
// of another pod. Both ends get the MTU from the allocation (the tunnel
// MTU), or "mtu" from the config when it is not 0.
//
// What the daemon does for this design (not the plugin): net.ipv4.ip_forward=1
// in the node's netns (the plugin sets forwarding only on the host ends it
// creates), masquerade of pod traffic leaving the pod range for outside the
// cluster, and releasing allocations whose pods are gone, since runtimes
// seldom send GC and DEL succeeds even when the daemon is down.
//
// # Errors
//
// Failures are CNI error JSON on stdout with a non-zero exit, using the
// spec's codes: 1 unsupported cniVersion, 2 a prevResult given to ADD,
// 3 no allocation for the container, 4 a bad CNI_NETNS or request,
// 5 I/O with the daemon, 6 config that is not JSON, 7 config values that
// are wrong, 11 the daemon is down, not ready or out of addresses (the
// runtime retries), 50 from STATUS when pods cannot be started, 100
// (ErrCheckMismatch) when CHECK finds the pod's network changed, 999 for
// anything else.
package cniplugin

import (
	"github.com/containernetworking/cni/pkg/version"

	weftversion "github.com/weftnet/weft/version"
)

// BinaryName is the name the runtime calls the plugin by; cnimain dispatches on it.
const BinaryName = "weft-cni"

// ConflistName is the network config file `weft install-cni` writes in the
// runtime's conf dir.
const ConflistName = "10-weft.conflist"

// SupportedVersions are the CNI spec versions the plugin answers VERSION with.
var SupportedVersions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// about is what the plugin prints when run without CNI_COMMAND.
func about() string { return BinaryName + " " + weftversion.Version }
