package kubenode

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/netlab"
)

// trackingHierarchy is the v1 hierarchy in which Close finds every process
// of a node: runc puts containers into each hierarchy, and the runtime
// processes are placed into it explicitly.
const trackingHierarchy = "pids"

// cgroupV1Mounts returns the mount points of the cgroup v1 hierarchies by
// controller (e.g. "cpu" -> /sys/fs/cgroup/cpu, "name=systemd" -> ...).
func cgroupV1Mounts() (map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseCgroupV1Mounts(f)
}

// parseCgroupV1Mounts reads a mountinfo file for cgroupV1Mounts.
func parseCgroupV1Mounts(r io.Reader) (map[string]string, error) {
	mounts := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// 36 35 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, postFields := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(postFields) < 3 || postFields[0] != "cgroup" {
			continue
		}
		for _, opt := range strings.Split(postFields[2], ",") {
			switch opt {
			case "rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "clone_children", "xattr":
				continue
			}
			mounts[opt] = fields[4]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(mounts) == 0 {
		return nil, errors.New("no cgroup v1 hierarchy mounted: kubenode runs on the hybrid cgroup layout only")
	}
	if _, ok := mounts[trackingHierarchy]; !ok {
		return nil, fmt.Errorf("no cgroup v1 %s hierarchy: kubenode finds a node's processes there", trackingHierarchy)
	}
	return mounts, nil
}

// hierarchyDirs are the distinct mount points (a hierarchy may hold
// several controllers, e.g. cpu,cpuacct).
func hierarchyDirs(mounts map[string]string) []string {
	var dirs []string
	for _, d := range mounts {
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	slices.Sort(dirs)
	return dirs
}

// makeCgroup creates the cgroup path (e.g. /weftlab-0a1b2c/node2/runtime)
// in every hierarchy; in the cpuset hierarchy each new level gets its
// parent's CPUs and memory nodes, without which nothing can join it.
func makeCgroup(mounts map[string]string, path string) error {
	cpuset := mounts["cpuset"]
	for _, root := range hierarchyDirs(mounts) {
		dir := root
		for _, part := range strings.Split(strings.Trim(path, "/"), "/") {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("make cgroup %s: %w", dir, err)
			}
			if root != cpuset {
				continue
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if cur, _ := os.ReadFile(filepath.Join(dir, f)); strings.TrimSpace(string(cur)) != "" {
					continue
				}
				v, err := os.ReadFile(filepath.Join(parent, f))
				if err != nil {
					return fmt.Errorf("read %s of cgroup %s: %w", f, parent, err)
				}
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("set %s of cgroup %s: %w", f, dir, err)
				}
			}
		}
	}
	return nil
}

// joinCgroup moves process pid into path of the tracking hierarchy.
func joinCgroup(mounts map[string]string, path string, pid int) error {
	procs := filepath.Join(mounts[trackingHierarchy], path, "cgroup.procs")
	if err := os.WriteFile(procs, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("move pid %d into %s: %w", pid, procs, err)
	}
	return nil
}

// cgroupPids lists the processes in path and below in the tracking
// hierarchy.
func cgroupPids(mounts map[string]string, path string) ([]int, error) {
	var pids []int
	root := filepath.Join(mounts[trackingHierarchy], path)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil // the cgroup went away
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids, err
}

// killCgroup SIGKILLs every process in path and below until none is left
// or the timeout passes. Freezing first is not needed: a process forked
// meanwhile is found in the next round.
func killCgroup(mounts map[string]string, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := cgroupPids(mounts, path)
		if err != nil {
			return fmt.Errorf("list processes of cgroup %s: %w", path, err)
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of cgroup %s still alive after %v", pids, path, timeout)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeCgroup removes path and everything below it from every hierarchy;
// a cgroup whose last process is still exiting is busy for a moment, so it
// retries until the timeout.
func removeCgroup(mounts map[string]string, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var errs []error
	for _, root := range hierarchyDirs(mounts) {
		top := filepath.Join(root, path)
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		// Deepest first.
		slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
		for _, d := range dirs {
			for {
				err := os.Remove(d)
				if err == nil || errors.Is(err, fs.ErrNotExist) {
					break
				}
				if time.Now().After(deadline) {
					errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	return errors.Join(errs...)
}

// CleanStale kills what nodes of interrupted runs left behind (containers
// whose shims died with the lab, outside any lab namespace) and removes
// their cgroups. A node is stale when its runtime cgroup, which holds its
// holder for as long as the node lives, is empty and older than a minute
// (a node being set up has it empty for a moment).
func CleanStale() error {
	mounts, err := cgroupV1Mounts()
	if err != nil {
		return nil // no cgroup v1: no node could have run
	}
	labs, err := filepath.Glob(filepath.Join(mounts[trackingHierarchy], netlab.NamePrefix+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, lab := range labs {
		nodes, _ := os.ReadDir(lab)
		left := 0
		for _, d := range nodes {
			if !d.IsDir() {
				continue
			}
			path := "/" + filepath.Base(lab) + "/" + d.Name()
			info, err := os.Stat(filepath.Join(lab, d.Name(), "runtime"))
			if err == nil && time.Since(info.ModTime()) < time.Minute {
				left++
				continue
			}
			if pids, _ := cgroupPids(mounts, path+"/runtime"); len(pids) > 0 {
				left++
				continue
			}
			errs = append(errs, killCgroup(mounts, path, 30*time.Second), removeCgroup(mounts, path, 10*time.Second))
		}
		if left == 0 {
			for _, root := range hierarchyDirs(mounts) {
				_ = os.Remove(filepath.Join(root, filepath.Base(lab)))
			}
		}
	}
	return errors.Join(errs...)
}
