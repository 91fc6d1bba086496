package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
)

// hostProcSys is where the DaemonSet mounts the host's /proc/sys/net
// writable, since a container that is not privileged sees /proc/sys
// read-only.
const hostProcSys = "/host/proc/sys/"

// setSysctl writes value to /proc/sys/<name with dots as slashes>, only
// when it differs; where /proc/sys is read-only it writes the same path
// under /host/proc/sys.
func setSysctl(name, value string) error {
	return setSysctlPath(strings.ReplaceAll(name, ".", "/"), value)
}

// setSysctlPath is setSysctl for a path relative to /proc/sys, for names
// whose parts hold dots (an interface eth0.100).
func setSysctlPath(rel, value string) error {
	name := strings.ReplaceAll(rel, "/", ".")
	path := "/proc/sys/" + rel
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	err = os.WriteFile(path, []byte(value), 0o644)
	if errors.Is(err, syscall.EROFS) {
		if herr := os.WriteFile(hostProcSys+rel, []byte(value), 0o644); herr == nil {
			return nil
		}
		return fmt.Errorf("set %s=%s: /proc/sys is read-only and %s is not writable: mount the host's /proc/sys/net there (deploy/weft.yaml does): %w",
			name, value, hostProcSys+rel, err)
	}
	if err != nil {
		return fmt.Errorf("set %s=%s: %w", name, value, err)
	}
	return nil
}

// nodeSysctls are what a routed pod network needs on the node, host-wide.
// Source validation is not among them: see setLooseRPFilter.
var nodeSysctls = [][2]string{
	{"net.ipv4.ip_forward", "1"},
}

// nodeSysctls6 are what a routed IPv6 pod network needs besides (dual
// stack or IPv6 only).
var nodeSysctls6 = [][2]string{
	{"net.ipv6.conf.all.forwarding", "1"},
}

// rpFilterLoose is net.ipv4.conf.*.rp_filter's loose mode: a packet's
// source must be routable, through any interface.
const rpFilterLoose = "2"

// setLooseRPFilter sets loose source validation on one of weft's own
// interfaces (the tunnel device; the CNI plugin does the same on each
// pod's host end) and leaves the host-wide conf.all as the operator set
// it. The kernel validates with the larger of conf.all and the
// interface's value, so loose (2) holds on an interface even where
// conf.all is strict (1), while 0 there would not; every other interface
// of the host keeps its own setting. Loose, not strict, because a peer's
// pods can send through the tunnel before this node routes their new
// range back through it (a donation in flight).
func setLooseRPFilter(iface string, log *slog.Logger) error {
	if err := setSysctlPath("net/ipv4/conf/"+iface+"/rp_filter", rpFilterLoose); err != nil {
		return fmt.Errorf("loose source validation on %s: %w", iface, err)
	}
	if all, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter"); err == nil && strings.TrimSpace(string(all)) == "1" {
		log.Info("net.ipv4.conf.all.rp_filter is 1 (strict) on this host and stays so; weft's interfaces are loose (2), which the kernel honours over it",
			"iface", iface)
	}
	return nil
}
