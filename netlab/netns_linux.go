package netlab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

const (
	// netnsDir is where named network namespaces live, as with `ip netns`.
	netnsDir = "/run/netns"
	// wgRunDir is where userspace WireGuard puts its UAPI sockets; every
	// process started in a node sees the node's own directory there.
	wgRunDir = "/run/wireguard"
	// registryDir holds one file per live lab: its owner and its directory,
	// so that CleanAll can tell a lab in use from a leftover.
	registryDir = "/run/weftlab"
)

var netnsDirOnce struct {
	sync.Mutex
	done bool
}

// ensureNetnsDir makes /run/netns a mount point with shared propagation, as
// `ip netns add` does. Processes started in a node live in a mount namespace
// that is a slave of the host's, so namespaces created or deleted later (pods)
// show up and disappear in their view too.
func ensureNetnsDir() error {
	netnsDirOnce.Lock()
	defer netnsDirOnce.Unlock()
	if netnsDirOnce.done {
		return nil
	}
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsDir, err)
	}
	unlock, err := lockRegistry()
	if err != nil {
		return err
	}
	defer unlock()
	err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: bind it onto itself, then share it.
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s onto itself: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", netnsDir, err)
	}
	netnsDirOnce.done = true
	return nil
}

// lockRegistry takes an exclusive lock shared by every lab process on this
// machine, for the few steps that must not race (first mount of /run/netns,
// CleanAll's decisions).
func lockRegistry() (func(), error) {
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", registryDir, err)
	}
	f, err := os.OpenFile(filepath.Join(registryDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lab lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock lab registry: %w", err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// createNetns creates a named network namespace (/run/netns/NAME) and
// returns its path.
func createNetns(name string) (string, error) {
	if err := ensureNetnsDir(); err != nil {
		return "", err
	}
	path := filepath.Join(netnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return "", fmt.Errorf("create netns file %s: %w", path, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// This thread enters a new network namespace and is never
		// unlocked: the Go runtime discards it when the goroutine ends.
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("unshare netns: %w", err)
			}
			src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
			if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind netns to %s: %w", path, err)
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// deleteNetns unmounts and removes a named network namespace; a missing one
// is not an error.
func deleteNetns(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// sysctls writes kernel settings (keys relative to /proc/sys) inside the
// network namespace at path.
func sysctls(path string, kv map[string]string) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error {
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", strings.ReplaceAll(k, "/", "."), v, path, err)
			}
		}
		return nil
	})
}

// place says where a process runs: a network namespace and, when WGDir is
// set, a private mount namespace in which WGDir is mounted on /run/wireguard
// (and so on /var/run/wireguard).
type place struct {
	Netns string
	WGDir string
}

// start starts cmd in p. The process inherits the namespaces of the thread
// that forks it, so start prepares a locked thread and forks from there; the
// thread is never unlocked and dies with its goroutine. The mount namespace
// is a slave of the host's: mounts of the host (new netns files) propagate
// in, its own /run/wireguard never propagates out, and it vanishes with the
// last process in it.
//
// Unless cmd says otherwise, the process gets a process group of its own, so
// a Ctrl-C at the terminal reaches the lab's owner, which stops its
// processes in order, and not each of them at once.
func start(cmd *exec.Cmd, p place) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			if p.WGDir != "" {
				if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
					return fmt.Errorf("unshare mount namespace: %w", err)
				}
				if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
					return fmt.Errorf("make / a slave mount: %w", err)
				}
				if err := unix.Mount(p.WGDir, wgRunDir, "", unix.MS_BIND, ""); err != nil {
					return fmt.Errorf("bind %s on %s: %w", p.WGDir, wgRunDir, err)
				}
			}
			if p.Netns != "" {
				fd, err := unix.Open(p.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					return fmt.Errorf("open netns %s: %w", p.Netns, err)
				}
				err = unix.Setns(fd, unix.CLONE_NEWNET)
				unix.Close(fd)
				if err != nil {
					return fmt.Errorf("enter netns %s: %w", p.Netns, err)
				}
			}
			return cmd.Start()
		}()
	}()
	return <-errc
}

// inNetns runs f on a thread inside the network namespace at path; sockets
// f opens stay in that namespace whatever thread uses them later.
func inNetns(path string, f func() error) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return f() })
}
