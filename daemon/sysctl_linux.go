package daemon

import (
	"errors"
	"fmt"
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
	rel := strings.ReplaceAll(name, ".", "/")
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

// nodeSysctls are what a routed pod network needs on the node.
var nodeSysctls = [][2]string{
	{"net.ipv4.ip_forward", "1"},
	{"net.ipv4.conf.all.rp_filter", "0"},
}
