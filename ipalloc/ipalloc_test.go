package ipalloc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/weftnet/weft/ipalloc"
	"github.com/weftnet/weft/ipalloc/ipalloctest"
)

var ctx = context.Background()

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func open(t *testing.T, dir, self, cidr string, seed ...string) *ipalloc.Allocator {
	t.Helper()
	a, err := ipalloc.New(ipalloc.Config{Self: self, CIDR: netip.MustParsePrefix(cidr), Seed: seed, StateDir: dir, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func openB(b *testing.B) *ipalloc.Allocator {
	a, err := ipalloc.New(ipalloc.Config{Self: "a", CIDR: netip.MustParsePrefix("10.32.0.0/12"), Seed: []string{"a"}, StateDir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	return a
}

func key(i int) ipalloc.Key { return ipalloc.Key{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"} }

func mustAlloc(t *testing.T, a *ipalloc.Allocator, k ipalloc.Key) netip.Addr {
	t.Helper()
	addr, err := a.Allocate(ctx, k, map[string]string{"pod": k.ContainerID})
	if err != nil {
		t.Fatalf("allocate %v: %v", k, err)
	}
	return addr
}

func TestAllocateReleaseGC(t *testing.T) {
	a := open(t, t.TempDir(), "a", "10.0.0.0/24", "a")
	defer a.Close()
	first := mustAlloc(t, a, key(1))
	if first != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("first address %s; want 10.0.0.1 (never the network address)", first)
	}
	if again := mustAlloc(t, a, key(1)); again != first {
		t.Errorf("second ADD of the same key: %s, want %s", again, first)
	}
	second := mustAlloc(t, a, key(2))
	if second == first {
		t.Fatal("two keys got the same address")
	}
	if addr, ok, err := a.Release(ctx, key(1)); err != nil || !ok || addr != first {
		t.Errorf("release: %s %v %v", addr, ok, err)
	}
	if _, ok, err := a.Release(ctx, key(1)); err != nil || ok {
		t.Errorf("second release: %v %v", ok, err)
	}
	// A released address is not reused at once.
	if third := mustAlloc(t, a, key(3)); third == first {
		t.Errorf("released address reused at once")
	}
	mustAlloc(t, a, key(4))
	gone, err := a.GC(ctx, []ipalloc.Key{key(3), key(99)})
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 2 || gone[0].Key != key(2) || gone[1].Key != key(4) {
		t.Errorf("gc released %v", gone)
	}
	if l := a.List(); len(l) != 1 || l[0].Key != key(3) || l[0].Meta["pod"] != "c3" {
		t.Errorf("list after gc: %v", l)
	}
	if _, err := a.Allocate(ctx, ipalloc.Key{IfName: "eth0"}, nil); err == nil {
		t.Error("allocate with no container ID: no error")
	}
}

func TestFull(t *testing.T) {
	a := open(t, t.TempDir(), "a", "10.0.0.0/28", "a")
	defer a.Close()
	seen := map[netip.Addr]bool{}
	for i := range 14 {
		addr := mustAlloc(t, a, key(i))
		if seen[addr] || addr == netip.MustParseAddr("10.0.0.0") || addr == netip.MustParseAddr("10.0.0.15") {
			t.Fatalf("bad address %s", addr)
		}
		seen[addr] = true
	}
	_, err := a.Allocate(ctx, key(100), nil)
	if !errors.Is(err, ipalloc.ErrFull) || err.Error() != "pod range 10.0.0.0/28 is full" {
		t.Fatalf("allocate in a full range: %v", err)
	}
	a.Release(ctx, key(3))
	if _, err := a.Allocate(ctx, key(100), nil); err != nil {
		t.Fatalf("allocate after a release: %v", err)
	}
}

func TestDurable(t *testing.T) {
	dir := t.TempDir()
	a := open(t, dir, "a", "10.0.0.0/24", "a")
	want := map[ipalloc.Key]netip.Addr{}
	for i := range 10 {
		want[key(i)] = mustAlloc(t, a, key(i))
	}
	a.Release(ctx, key(0))
	delete(want, key(0))
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := open(t, dir, "a", "10.0.0.0/24", "a")
	for k, addr := range want {
		if got := mustAlloc(t, b, k); got != addr {
			t.Errorf("%v after reopen: %s, want %s", k, got, addr)
		}
	}
	if n := len(b.List()); n != len(want) {
		t.Errorf("%d allocations after reopen, want %d", n, len(want))
	}
	// Killed right after Allocate returned: the file as it is on disk at
	// that moment, copied while the allocator still runs.
	last := mustAlloc(t, b, key(50))
	crash := t.TempDir()
	copyFile(t, filepath.Join(dir, ipalloc.StateFile), filepath.Join(crash, ipalloc.StateFile))
	b.Close()
	c := open(t, crash, "a", "10.0.0.0/24", "a")
	defer c.Close()
	if got := mustAlloc(t, c, key(50)); got != last {
		t.Errorf("allocation lost in the crash: %s, want %s", got, last)
	}
	for i := 100; i < 120; i++ {
		addr := mustAlloc(t, c, key(i))
		for k, old := range want {
			if old == addr {
				t.Fatalf("%s handed out again (held by %v)", addr, k)
			}
		}
		if addr == last {
			t.Fatalf("%s handed out again", addr)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
}

func TestBadStateFile(t *testing.T) {
	cfg := func(dir string) ipalloc.Config {
		return ipalloc.Config{Self: "a", CIDR: netip.MustParsePrefix("10.0.0.0/24"), Seed: []string{"a"}, StateDir: dir, Logger: quiet()}
	}
	t.Run("corrupt", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, ipalloc.StateFile), []byte(strings.Repeat("garbage!", 1000)), 0o600)
		_, err := ipalloc.New(cfg(dir))
		if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, ipalloc.StateFile)) || !strings.Contains(err.Error(), "move it away") {
			t.Fatalf("corrupt file: %v", err)
		}
	})
	t.Run("newer", func(t *testing.T) {
		dir := t.TempDir()
		a, err := ipalloc.New(cfg(dir))
		if err != nil {
			t.Fatal(err)
		}
		a.Close()
		db, err := bolt.Open(filepath.Join(dir, ipalloc.StateFile), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("format"), []byte("99")) })
		db.Close()
		_, err = ipalloc.New(cfg(dir))
		if err == nil || !strings.Contains(err.Error(), "newer weft") || !strings.Contains(err.Error(), "move the file away") {
			t.Fatalf("newer file: %v", err)
		}
	})
	t.Run("bad record", func(t *testing.T) {
		dir := t.TempDir()
		a, _ := ipalloc.New(cfg(dir))
		mustAlloc(t, a, key(1))
		a.Close()
		db, _ := bolt.Open(filepath.Join(dir, ipalloc.StateFile), 0o600, nil)
		db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("allocations")).Put([]byte("c1\x00eth0"), []byte("{"))
		})
		db.Close()
		if _, err := ipalloc.New(cfg(dir)); err == nil || !strings.Contains(err.Error(), "move it away") {
			t.Fatalf("bad record: %v", err)
		}
	})
	t.Run("other range", func(t *testing.T) {
		dir := t.TempDir()
		a, _ := ipalloc.New(cfg(dir))
		a.Close()
		c := cfg(dir)
		c.CIDR = netip.MustParsePrefix("10.1.0.0/24")
		if _, err := ipalloc.New(c); err == nil || !strings.Contains(err.Error(), "--pod-cidr 10.0.0.0/24") {
			t.Fatalf("other range: %v", err)
		}
	})
}

func TestDonation(t *testing.T) {
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.0.0.0/24")
	a := n.Add(t, ipalloc.Config{Self: "a", CIDR: cidr, Seed: []string{"a"}})
	b := n.Add(t, ipalloc.Config{Self: "b", CIDR: cidr, Seed: []string{"a"}})
	if ok, why := b.Ready(); ok || why == "" {
		t.Errorf("b ready before hearing the ring: %v %q", ok, why)
	}
	if _, err := b.Allocate(ctx, key(1), nil); !errors.Is(err, ipalloc.ErrNoSpace) || !strings.Contains(err.Error(), "retry") {
		t.Errorf("allocate before the ring: %v", err)
	}
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	addr := mustAlloc(t, b, key(1))
	r := b.Ranges()
	if len(r["b"]) != 1 || !r["b"][0].Contains(addr) || r["b"][0].Bits() != 26 {
		t.Errorf("b's ranges after donation: %v (address %s)", r, addr)
	}
	if got := a.Ranges(); fmt.Sprint(got) != fmt.Sprint(r) {
		t.Errorf("a and b disagree: %v vs %v", got, r)
	}
	select {
	case <-b.Changes():
	default:
		t.Error("no change signalled")
	}
	// Fill everything: b asks a again until the range is full.
	seen := map[netip.Addr]bool{addr: true}
	for i := 2; ; i++ {
		alloc := a
		if i%2 == 0 {
			alloc = b
		}
		addr, err := alloc.Allocate(ctx, key(i), nil)
		if err != nil {
			if !errors.Is(err, ipalloc.ErrFull) && !errors.Is(err, ipalloc.ErrNoSpace) {
				t.Fatal(err)
			}
			break
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		n.Gossip()
	}
	if len(seen) < 250 {
		t.Errorf("only %d addresses handed out of 254", len(seen))
	}
	st := b.Status(func(string) bool { return true })
	if st.Range != cidr || len(st.Nodes) != 2 || st.UnreachableAddresses != 0 {
		t.Errorf("status: %+v", st)
	}
}

func TestDonationTimeoutTriesAnotherPeer(t *testing.T) {
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.0.0.0/24")
	n.Add(t, ipalloc.Config{Self: "a", CIDR: cidr, Seed: []string{"a", "c"}})
	n.Add(t, ipalloc.Config{Self: "c", CIDR: cidr, Seed: []string{"a", "c"}})
	b := n.Add(t, ipalloc.Config{Self: "b", CIDR: cidr, RequestTimeout: 50 * time.Millisecond})
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	// a has the most free space (c used some) but never answers.
	for i := range 10 {
		mustAlloc(t, n.Alloc("c"), key(i))
	}
	n.Gossip()
	n.SetDrop(func(from, to string) bool { return to == "a" })
	addr := mustAlloc(t, b, key(1))
	if !netip.MustParsePrefix("10.0.0.128/25").Contains(addr) {
		t.Errorf("b got %s, want an address from c's half", addr)
	}
}

func inRange(t *testing.T, cidr string, addr netip.Addr) bool {
	return netip.MustParsePrefix(cidr).Contains(addr)
}

func TestConcurrentRmpeer(t *testing.T) {
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.0.0.0/24")
	seed := []string{"a", "b", "c", "d"}
	for _, s := range seed {
		n.Add(t, ipalloc.Config{Self: s, CIDR: cidr, Seed: seed})
	}
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	n.Stop("d")
	a, b, c := n.Alloc("a"), n.Alloc("b"), n.Alloc("c")
	st := a.Status(func(node string) bool { return node != "d" })
	if st.UnreachableAddresses != 64 || st.UnreachableShare != 0.25 || len(st.Nodes) != 4 || st.Nodes[3].Reachable {
		t.Errorf("status before the reclaim: %+v", st)
	}
	if _, err := a.Rmpeer(ctx, "c"); err == nil {
		t.Error("rmpeer of a live node: no error")
	}
	// a and b reclaim d at the same time, hearing nothing from each other.
	n.SetDrop(func(from, to string) bool { return true })
	for _, x := range []*ipalloc.Allocator{a, b} {
		msg, err := x.Rmpeer(ctx, "d")
		if err != nil || !strings.Contains(msg, "10.0.0.192/26") {
			t.Fatalf("rmpeer: %q %v", msg, err)
		}
		if st := x.Status(nil); len(st.PendingClaims) != 1 {
			t.Fatalf("pending claims: %+v", st.PendingClaims)
		}
	}
	// Before confirmation neither allocates from d's range: each runs out
	// after its own 63 or 64 addresses.
	for name, x := range map[string]*ipalloc.Allocator{"a": a, "b": b} {
		for i := 0; ; i++ {
			addr, err := x.Allocate(ctx, ipalloc.Key{ContainerID: fmt.Sprint(name, i), IfName: "eth0"}, nil)
			if err != nil {
				if !errors.Is(err, ipalloc.ErrNoSpace) || i < 63 {
					t.Fatalf("%s after %d: %v", name, i, err)
				}
				break
			}
			if inRange(t, "10.0.0.192/26", addr) {
				t.Fatalf("%s allocated %s from an unconfirmed claim", name, addr)
			}
		}
	}
	n.SetDrop(nil)
	for range 2 {
		if err := n.Gossip(); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range []*ipalloc.Allocator{a, b, c} {
		r := x.Ranges()
		if _, ok := r["d"]; ok || fmt.Sprint(r["a"]) != "[10.0.0.0/26 10.0.0.192/26]" || fmt.Sprint(r["b"]) != "[10.0.0.64/26]" {
			t.Errorf("ranges after the concurrent reclaim: %v", r)
		}
		if st := x.Status(nil); len(st.PendingClaims) != 0 {
			t.Errorf("pending claims left: %+v", st.PendingClaims)
		}
	}
	if addr := mustAlloc(t, a, key(1000)); !inRange(t, "10.0.0.192/26", addr) {
		t.Errorf("a allocates %s after confirmation, want one from d's range", addr)
	}
	if msg, err := c.Rmpeer(ctx, "d"); err != nil || !strings.Contains(msg, "nothing to reclaim") {
		t.Errorf("second rmpeer: %q %v", msg, err)
	}
}

func TestStaleNodeAfterReclaim(t *testing.T) {
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.0.0.0/24")
	seed := []string{"a", "b", "c"}
	for _, s := range seed {
		n.Add(t, ipalloc.Config{Self: s, CIDR: cidr, Seed: seed})
	}
	n.Gossip()
	old := map[ipalloc.Key]netip.Addr{}
	for i := range 5 {
		old[key(i)] = mustAlloc(t, n.Alloc("c"), key(i))
	}
	n.Stop("c")
	a := n.Alloc("a")
	if _, err := a.Rmpeer(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	n.Gossip()
	// a now hands out all of c's old range, old addresses included.
	held := map[netip.Addr]bool{}
	for i := range 190 {
		held[mustAlloc(t, a, ipalloc.Key{ContainerID: fmt.Sprint("a", i), IfName: "eth0"})] = true
	}
	for _, addr := range old {
		if !held[addr] {
			t.Fatalf("a did not reuse %s", addr)
		}
	}
	c := n.Restart(t, "c")
	if ok, _ := c.Ready(); ok {
		t.Fatal("stale node ready before hearing from a peer")
	}
	for k := range old {
		if addr, err := c.Allocate(ctx, k, nil); !errors.Is(err, ipalloc.ErrNoSpace) {
			t.Fatalf("stale node served %s (%v) before hearing from a peer", addr, err)
		}
	}
	n.Gossip()
	if r := c.Ranges(); len(r["c"]) != 0 {
		t.Fatalf("c still owns %v", r["c"])
	}
	for k, was := range old {
		addr, err := c.Allocate(ctx, k, nil)
		if err != nil {
			t.Fatal(err)
		}
		if addr == was || held[addr] {
			t.Fatalf("stale node served %s again", addr)
		}
		held[addr] = true
	}
}

func TestRefuseOtherGenesis(t *testing.T) {
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.0.0.0/24")
	a := n.Add(t, ipalloc.Config{Self: "a", CIDR: cidr, Seed: []string{"a", "b"}})
	b := n.Add(t, ipalloc.Config{Self: "b", CIDR: cidr, Seed: []string{"b"}})
	before := a.Ranges()
	err := a.MergeRemote(b.LocalState())
	if !errors.Is(err, ipalloc.ErrDifferentGenesis) {
		t.Fatalf("merge of another genesis: %v", err)
	}
	if fmt.Sprint(a.Ranges()) != fmt.Sprint(before) {
		t.Error("refused ring changed the ranges")
	}
	if st := a.Status(nil); !strings.Contains(st.RefusedGenesis, "refused the ring of b") {
		t.Errorf("status does not say it refused: %+v", st)
	}
	if err := a.MergeRemote([]byte("junk")); err == nil {
		t.Error("junk merged")
	}
	if err := a.HandleMessage("b", []byte("junk")); err == nil {
		t.Error("junk message taken")
	}
}

func TestDonationAndClaimsSurviveRestart(t *testing.T) {
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.0.0.0/24")
	seed := []string{"a", "d"}
	n.Add(t, ipalloc.Config{Self: "a", CIDR: cidr, Seed: seed})
	n.Add(t, ipalloc.Config{Self: "d", CIDR: cidr, Seed: seed})
	b := n.Add(t, ipalloc.Config{Self: "b", CIDR: cidr})
	n.Gossip()
	mustAlloc(t, b, key(1))
	n.Stop("d")
	n.SetDrop(func(from, to string) bool { return true })
	if _, err := n.Alloc("a").Rmpeer(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	want := n.Alloc("a").Ranges()
	// a restarts: it still knows what it gave b and what it claimed.
	a := n.Restart(t, "a")
	if got := a.Ranges(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ranges after restart: %v, want %v", got, want)
	}
	if st := a.Status(nil); len(st.PendingClaims) != 1 || fmt.Sprint(st.PendingClaims[0].WaitingFor) != "[b]" {
		t.Errorf("pending claims after restart: %+v", st.PendingClaims)
	}
	n.SetDrop(nil)
	n.Gossip()
	if st := a.Status(nil); len(st.PendingClaims) != 0 || !st.Ready {
		t.Errorf("after gossip: %+v", st)
	}
}
