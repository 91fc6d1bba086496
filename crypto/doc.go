// Package crypto owns weft's keys and its tunnel device.
//
// Keys: the node's WireGuard private key lives in STATE_DIR/wireguard.key
// (LoadOrCreatePrivateKey); the cluster secret is a file shared by every node
// (ReadSecret), and the gossip encryption key and the WireGuard preshared key
// are derived from it with HKDF-SHA256 (Secret.GossipKey, Secret.PresharedKey),
// so nodes only have to share one file.
//
// Tunnel: OpenTunnel brings up the WireGuard device, in the kernel when the
// kernel has WireGuard, else as embedded userspace wireguard-go on a TUN
// device with its UAPI socket, so that wgctrl and `wg show` work the same way
// in both modes. The data path outlives the daemon: Close leaves the device,
// its addresses and routes in place (the userspace TUN is persistent), a new
// OpenTunnel reattaches to it, and only DestroyTunnel removes it.
package crypto
