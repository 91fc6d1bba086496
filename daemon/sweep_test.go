package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weftnet/weft/ipalloc"
)

func TestVanished(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	old := now.Add(-time.Minute)
	node := ipalloc.Key{ContainerID: "weft-node:n1", IfName: "weft"}
	al := func(id, netns string, created time.Time) ipalloc.Allocation {
		return ipalloc.Allocation{Key: ipalloc.Key{ContainerID: id, IfName: "eth0"}, Addr: netip.MustParseAddr("10.32.0.9"),
			Meta: map[string]string{"netns": netns}, Created: created}
	}
	all := []ipalloc.Allocation{
		{Key: node, Created: old, Meta: map[string]string{"netns": "/gone/node"}},
		al("gone-old", "/gone/a", old),
		al("gone-new", "/gone/b", now.Add(-time.Second)),
		al("alive", "/alive/c", old),
		al("no-netns", "", old),
	}
	gone := func(p string) bool { return filepath.Dir(p) == "/gone" }
	got := vanished(all, func(k ipalloc.Key) bool { return k == node }, now, gone)
	if len(got) != 1 || got[0].Key.ContainerID != "gone-old" {
		t.Fatalf("vanished = %+v, want only gone-old", got)
	}
}

func TestNetnsGone(t *testing.T) {
	dir := t.TempDir()
	present := filepath.Join(dir, "present")
	if err := os.WriteFile(present, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{
		present:                         false,
		filepath.Join(dir, "missing"):   true,
		"/no-such-dir-weft/netns/cni-1": false, // directory not visible: cannot tell
		"relative/path":                 false,
	} {
		if got := netnsGone(path); got != want {
			t.Errorf("netnsGone(%q) = %v, want %v", path, got, want)
		}
	}
}
