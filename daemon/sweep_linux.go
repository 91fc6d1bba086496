package daemon

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/weftnet/weft/ipalloc"
)

// sweepGrace is how old an allocation must be before a missing netns frees
// it, so an ADD still in progress is never swept.
const sweepGrace = 30 * time.Second

// sweepLoop releases allocations whose pod is gone. Runtimes seldom send GC
// and a DEL can be lost (the daemon was down), so the daemon looks itself:
// an allocation whose network namespace no longer exists is freed.
func (a *agent) sweepLoop(ctx context.Context) error {
	t := time.NewTicker(a.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, al := range vanished(a.alloc.List(), a.ownKey, time.Now(), netnsGone) {
			if _, _, err := a.alloc.Release(ctx, al.Key); err != nil {
				a.log.Warn("release allocation of a vanished pod", "container", al.Key.ContainerID, "err", err)
				continue
			}
			a.log.Info("released the address of a pod whose network namespace is gone",
				"addr", al.Addr, "container", al.Key.ContainerID, "netns", al.Meta["netns"],
				"pod", al.Meta["namespace"]+"/"+al.Meta["pod"])
		}
	}
}

// vanished picks the allocations to free: older than sweepGrace, not the
// node's own, and whose netns gone() says is gone.
func vanished(all []ipalloc.Allocation, own func(ipalloc.Key) bool, now time.Time, gone func(string) bool) []ipalloc.Allocation {
	var out []ipalloc.Allocation
	for _, al := range all {
		if own(al.Key) || now.Sub(al.Created) < sweepGrace {
			continue
		}
		if p := al.Meta["netns"]; p != "" && gone(p) {
			out = append(out, al)
		}
	}
	return out
}

// netnsGone reports whether the netns at path is gone for sure: the path is
// missing while its directory is there. When the directory itself is not
// visible (a daemon in a container without the host's netns directory),
// nothing can be told, so nothing is swept.
func netnsGone(path string) bool {
	if !filepath.IsAbs(path) {
		return false
	}
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		return false
	}
	_, err := os.Stat(path)
	return errors.Is(err, fs.ErrNotExist)
}
