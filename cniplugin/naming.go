package cniplugin

import (
	"crypto/sha256"
	"encoding/hex"
)

// HostVethPrefix begins the name of every host end of a pod veth. It cannot
// clash with the tunnel device (weft) or the kernel's and other plugins'
// names (veth*, cali*, eth*).
const HostVethPrefix = "wv"

// hostVethHexLen hex digits follow the prefix: 2+13 = 15 bytes, the most a
// Linux interface name holds.
const hostVethHexLen = 13

// HostVethName is the name of the host end of the veth of one attachment:
// stable for the same container ID and interface, so DEL and GC find it
// without any state, and at most 15 bytes.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:hostVethHexLen]
}

// IsHostVethName tells whether name has the form HostVethName gives.
func IsHostVethName(name string) bool {
	if len(name) != len(HostVethPrefix)+hostVethHexLen || name[:len(HostVethPrefix)] != HostVethPrefix {
		return false
	}
	for _, c := range name[len(HostVethPrefix):] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
