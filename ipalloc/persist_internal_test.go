package ipalloc

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

// TestAllocateWriteFails: an allocation that cannot be written is not
// handed out, and its address is free again.
func TestAllocateWriteFails(t *testing.T) {
	a, err := New(Config{Self: "a", CIDR: netip.MustParsePrefix("10.0.0.0/24"), Seed: []string{"a"},
		StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	free := a.free
	a.store.db.Close() // every write fails from now on
	k := Key{ContainerID: "c1", IfName: "eth0"}
	if _, err := a.Allocate(context.Background(), k, nil); err == nil || !strings.Contains(err.Error(), "write IPAM state file") {
		t.Fatalf("allocate with a closed state file: %v, want an error about writing it", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.allocs) != 0 || len(a.byOff) != 0 || len(a.writing) != 0 || a.free != free {
		t.Errorf("after a failed write: %d allocations, %d offsets, %d writes, %d free; want 0, 0, 0, %d",
			len(a.allocs), len(a.byOff), len(a.writing), a.free, free)
	}
}
