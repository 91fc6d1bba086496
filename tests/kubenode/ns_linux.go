package kubenode

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// onNodeThread runs f on a new OS thread that has entered the mount
// namespace of process pid and, unless netns is "", the network namespace
// at netns; processes f starts inherit both. The thread is never given back
// to the Go scheduler: it ends with f's goroutine.
func onNodeThread(pid int, netns string, f func() error) error {
	// Both are opened first: the node's /run hides /run/netns.
	mntFD, err := openNS("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
	if err != nil {
		return err
	}
	defer unix.Close(mntFD)
	netFD := -1
	if netns != "" {
		if netFD, err = openNS(netns); err != nil {
			return err
		}
		defer unix.Close(netFD)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			// A thread sharing its filesystem attributes with others
			// may not change its mount namespace.
			if err := unix.Unshare(unix.CLONE_FS); err != nil {
				return fmt.Errorf("unshare filesystem attributes: %w", err)
			}
			if err := unix.Setns(mntFD, unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("enter the mount namespace of pid %d: %w", pid, err)
			}
			if netFD >= 0 {
				if err := unix.Setns(netFD, unix.CLONE_NEWNET); err != nil {
					return fmt.Errorf("enter network namespace %s: %w", netns, err)
				}
			}
			return f()
		}()
	}()
	return <-errc
}

func openNS(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open namespace %s: %w", path, err)
	}
	return fd, nil
}

// mount is one mount the node's namespace gets, in order.
type mount struct {
	Source, Target, FSType string
	Flags                  uintptr
}

// mountAll makes the mounts in the mount namespace of process pid (the
// holder), which is already a slave of the host's.
func mountAll(pid int, mounts []mount) error {
	return onNodeThread(pid, "", func() error {
		for _, m := range mounts {
			if err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, ""); err != nil {
				return fmt.Errorf("mount %s on %s in the node's mount namespace: %w", m.Source, m.Target, err)
			}
		}
		return nil
	})
}

// process is a program of the node (containerd, kubelet) with its log.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when it has exited
	err     error         // after done
}

// startProcess starts bin in the namespaces of the holder and the node,
// output appended to logPath.
func startProcess(name string, holder int, netns, logPath, bin string, args, env []string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open the log of %s: %w", name, err)
	}
	defer logf.Close() // the child has its own descriptor
	fmt.Fprintf(logf, "--- kubenode %s: start %s %v\n", time.Now().Format(time.RFC3339Nano), bin, args)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = env
	cmd.Dir = "/"
	// A process group of its own: a Ctrl-C at the terminal reaches the
	// test, which stops the node in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := onNodeThread(holder, netns, cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) running() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and, after grace, SIGKILL; not running is no error.
func (p *process) stop(grace time.Duration) error {
	if !p.running() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// exitError says how p ended, for an error message.
func (p *process) exitError() error {
	if p.running() {
		return nil
	}
	if p.err == nil {
		return errors.New(p.name + " exited with status 0")
	}
	return fmt.Errorf("%s exited: %w", p.name, p.err)
}

// tail returns the last lines of the process's log, labelled.
func (p *process) tail(lines int) string {
	if p == nil {
		return ""
	}
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("--- %s log unreadable: %v", p.name, err)
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return fmt.Sprintf("--- last lines of %s log (%s):\n%s", p.name, p.logPath, strings.Join(all, "\n"))
}

// writeFiles writes each path under dir with its contents.
func writeFiles(dir string, files map[string][]byte) error {
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
