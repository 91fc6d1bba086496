package ipalloc_test

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/weftnet/weft/ipalloc"
)

// TestAllocateBurst: many ADDs at once, a few of them twice for the same
// container (a runtime retrying), get distinct addresses, the same one for
// the same key, and all of them are on disk when Allocate returns; a DEL
// racing its ADD never leaves the address held on disk.
func TestAllocateBurst(t *testing.T) {
	dir := t.TempDir()
	a := open(t, dir, "a", "10.0.0.0/24", "a")
	const n = 60
	got := make([][2]netip.Addr, n)
	var wg sync.WaitGroup
	for i := range n {
		for j := range 2 {
			if j == 1 && i%3 != 0 {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				addr, err := a.Allocate(ctx, key(i), nil)
				if err != nil {
					t.Errorf("allocate %v: %v", key(i), err)
				}
				got[i][j] = addr
			}()
		}
	}
	// DELs of containers 100-119 while their ADDs run.
	for i := 100; i < 120; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := a.Allocate(ctx, key(i), nil); err != nil {
				t.Errorf("allocate %v: %v", key(i), err)
			}
		}()
		go func() {
			defer wg.Done()
			if _, _, err := a.Release(ctx, key(i)); err != nil {
				t.Errorf("release %v: %v", key(i), err)
			}
		}()
	}
	wg.Wait()
	// Whichever of each ADD/DEL pair came second decides; end with DELs.
	for i := 100; i < 120; i++ {
		if _, _, err := a.Release(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[netip.Addr]ipalloc.Key{}
	for i := range n {
		if i%3 == 0 && got[i][0] != got[i][1] {
			t.Errorf("%v allocated twice at once: %s and %s", key(i), got[i][0], got[i][1])
		}
		if k, dup := seen[got[i][0]]; dup {
			t.Errorf("%s given to %v and %v", got[i][0], k, key(i))
		}
		seen[got[i][0]] = key(i)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := open(t, dir, "a", "10.0.0.0/24", "a")
	defer b.Close()
	list := b.List()
	if len(list) != n {
		t.Errorf("%d allocations on disk, want %d", len(list), n)
	}
	for _, al := range list {
		if k, ok := seen[al.Addr]; !ok || k != al.Key {
			t.Errorf("on disk: %s for %v, want %v", al.Addr, al.Key, k)
		}
	}
}
