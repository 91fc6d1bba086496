package kubelab

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A lab's directories are named for the process that made them, so that a
// later Start can remove those a killed test binary left behind:
//
//	$TMPDIR/kubelab-PID-*        certificates, kubeconfigs, logs
//	/dev/shm/kubelab-etcd-PID-*  etcd's data (in memory)
//
// The servers themselves die with the test binary (see startIn).
func dirPattern(prefix string) string {
	return prefix + strconv.Itoa(os.Getpid()) + "-*"
}

// removeStale removes the directories of labs whose process is gone.
func removeStale(logf func(msg string, args ...any)) {
	for _, glob := range []string{
		filepath.Join(os.TempDir(), "kubelab-*"),
		filepath.Join("/dev/shm", "kubelab-etcd-*"),
	} {
		dirs, _ := filepath.Glob(glob)
		for _, d := range dirs {
			if ownerGone(filepath.Base(d)) {
				if err := os.RemoveAll(d); err == nil {
					logf("removed a lab directory left behind", "dir", d)
				}
			}
		}
	}
}

// ownerGone reports whether name (kubelab-PID-x or kubelab-etcd-PID-x)
// belongs to a process that no longer exists.
func ownerGone(name string) bool {
	name = strings.TrimPrefix(strings.TrimPrefix(name, "kubelab-"), "etcd-")
	pidText, _, ok := strings.Cut(name, "-")
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
