package netlab

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// CleanAll removes what labs of interrupted runs left behind: processes in
// their network namespaces, the namespaces, their mounts, directories and
// registry entries. Only names starting with NamePrefix are touched, and a
// lab whose owning process is still alive is left alone.
func CleanAll(log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	unlock, err := lockRegistry()
	if err != nil {
		return err
	}
	defer unlock()

	regs := readRegistry()
	live := map[string]bool{}
	for prefix, r := range regs {
		if alive(r.Pid, r.Start) {
			live[prefix] = true
		}
	}
	owner := func(name string) string {
		best := ""
		for prefix := range regs {
			if (name == prefix || strings.HasPrefix(name, prefix+"-")) && len(prefix) > len(best) {
				best = prefix
			}
		}
		if best != "" {
			return best
		}
		// Default prefixes are weftlab-<hex>.
		parts := strings.SplitN(name, "-", 3)
		if len(parts) >= 2 {
			return parts[0] + "-" + parts[1]
		}
		return name
	}

	var errs []error
	var dead []string
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), NamePrefix) {
			continue
		}
		if p := owner(e.Name()); live[p] {
			log.Info("lab still in use; left alone", "lab", p, "netns", e.Name(), "pid", regs[p].Pid)
			continue
		}
		dead = append(dead, filepath.Join(netnsDir, e.Name()))
	}
	if err := killInNetns(dead, log); err != nil {
		errs = append(errs, err)
	}
	for _, path := range dead {
		log.Info("removing netns", "netns", filepath.Base(path))
		if err := deleteNetns(path); err != nil {
			errs = append(errs, err)
		}
	}

	// Mounts of dead labs that are left without their file.
	for _, mp := range ourMounts() {
		if live[owner(filepath.Base(mp))] {
			continue
		}
		log.Info("unmounting", "mount", mp)
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}

	// Directories: those named in the registry and those in the temp dir.
	dirs := map[string]string{}
	for prefix, r := range regs {
		if !live[prefix] && r.Dir != "" {
			dirs[r.Dir] = prefix
		}
	}
	tmp, _ := os.ReadDir(os.TempDir())
	for _, e := range tmp {
		if e.IsDir() && strings.HasPrefix(e.Name(), NamePrefix) && !live[e.Name()] {
			dirs[filepath.Join(os.TempDir(), e.Name())] = e.Name()
		}
	}
	for dir, prefix := range dirs {
		if _, err := os.Stat(filepath.Join(dir, labMarker)); err != nil {
			continue // not a lab's directory, or gone already
		}
		log.Info("removing lab dir", "lab", prefix, "dir", dir)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	for prefix := range regs {
		if !live[prefix] {
			os.Remove(filepath.Join(registryDir, prefix+".json"))
		}
	}
	return errors.Join(errs...)
}

func readRegistry() map[string]registration {
	regs := map[string]registration{}
	ents, _ := os.ReadDir(registryDir)
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !strings.HasPrefix(name, NamePrefix) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(registryDir, e.Name()))
		if err != nil {
			continue
		}
		var r registration
		if json.Unmarshal(b, &r) == nil {
			regs[name] = r
		}
	}
	return regs
}

// ourMounts lists mount points in this mount namespace whose last element
// starts with NamePrefix.
func ourMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if strings.HasPrefix(filepath.Base(mp), NamePrefix) {
			out = append(out, mp)
		}
	}
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// procStart is the start time of pid in clock ticks since boot.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses; fields after the
	// last ')' are fixed.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

func alive(pid int, start uint64) bool {
	s, err := procStart(pid)
	return err == nil && s == start
}

// killInNetns kills (SIGKILL) every process whose network namespace is one
// of those at paths, and waits up to 5 s until they are gone.
func killInNetns(paths []string, log *slog.Logger) error {
	type key struct{ dev, ino uint64 }
	want := map[key]string{}
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			continue
		}
		want[key{st.Dev, st.Ino}] = p
	}
	if len(want) == 0 {
		return nil
	}
	find := func() []int {
		var pids []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil {
				continue
			}
			if _, ok := want[key{st.Dev, st.Ino}]; ok {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := find()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v survive SIGKILL in the lab's namespaces", pids)
		}
		for _, pid := range pids {
			log.Info("killing process in lab netns", "pid", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
