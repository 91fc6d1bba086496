package ipalloc_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/ipalloc"
	"github.com/weftnet/weft/ipalloc/ipalloctest"
)

// silentDonorNetwork is a, c (seeded, a with the most free space) and b,
// which owns nothing; sends to a hang for hang and never arrive.
func silentDonorNetwork(t *testing.T, timeout, hang time.Duration) (*ipalloctest.Network, *ipalloc.Allocator) {
	t.Helper()
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.0.0.0/24")
	n.Add(t, ipalloc.Config{Self: "a", CIDR: cidr, Seed: []string{"a", "c"}})
	n.Add(t, ipalloc.Config{Self: "c", CIDR: cidr, Seed: []string{"a", "c"}})
	b := n.Add(t, ipalloc.Config{Self: "b", CIDR: cidr, RequestTimeout: timeout})
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		mustAlloc(t, n.Alloc("c"), key(100+i))
	}
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	n.SetSilent(func(from, to string) bool { return to == "a" }, hang)
	return n, b
}

// A burst of ADDs on a node with no space, whose best donor drops packets
// (its sends block longer than any ADD may wait): every Allocate returns
// within its deadline, and all get addresses from the donor that answers.
func TestSilentDonorDoesNotHoldUpAllocate(t *testing.T) {
	n, b := silentDonorNetwork(t, 400*time.Millisecond, 2*time.Second)
	const burst = 20
	deadline := 1500 * time.Millisecond
	var wg sync.WaitGroup
	addrs := make([]netip.Addr, burst)
	errs := make([]error, burst)
	took := make([]time.Duration, burst)
	for i := range burst {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			addrs[i], errs[i] = b.Allocate(ctx, key(i), nil)
			took[i] = time.Since(start)
		})
	}
	// Meanwhile the allocator answers other calls at once: no lock is held
	// while a donor is asked.
	for range 5 {
		start := time.Now()
		b.Status(nil)
		b.List()
		if took := time.Since(start); took > 100*time.Millisecond {
			t.Errorf("status took %v during the burst", took)
		}
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i := range burst {
		if took[i] > deadline+200*time.Millisecond {
			t.Errorf("allocate %d took %v, its deadline was %v", i, took[i], deadline)
		}
		if errs[i] != nil {
			t.Errorf("allocate %d: %v", i, errs[i])
			continue
		}
		if !inRange(t, "10.0.0.128/25", addrs[i]) {
			t.Errorf("allocate %d got %s, want an address from c's half", i, addrs[i])
		}
		if seen[addrs[i]] {
			t.Errorf("%s handed out twice", addrs[i])
		}
		seen[addrs[i]] = true
	}
	if got := n.Sends("b", "a"); got > 1 {
		t.Errorf("b sent %d requests to the silent a during one burst, want at most 1", got)
	}
}

// With every donor silent, an Allocate with a deadline returns when its
// deadline passes, retryable, although the sends are still blocked; one
// without a deadline returns when the round ends, naming the silent peer.
func TestAllDonorsSilent(t *testing.T) {
	n, b := silentDonorNetwork(t, 300*time.Millisecond, 2*time.Second)
	n.SetSilent(func(from, to string) bool { return to == "a" || to == "c" }, 2*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.Allocate(ctx, key(1), nil)
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("allocate with a deadline of 150ms took %v", took)
	}
	if !errors.Is(err, ipalloc.ErrNoSpace) || !strings.Contains(err.Error(), "retry") {
		t.Errorf("allocate with a deadline: %v, want a retryable ErrNoSpace", err)
	}

	start = time.Now()
	_, err = b.Allocate(context.Background(), key(2), nil)
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("allocate without a deadline took %v, want about the request timeout (300ms)", took)
	}
	if !errors.Is(err, ipalloc.ErrNoSpace) || !strings.Contains(err.Error(), "did not answer") {
		t.Errorf("allocate without a deadline: %v, want ErrNoSpace naming the silent peers", err)
	}
	st := b.Status(nil)
	for _, ns := range st.Nodes {
		if (ns.Name == "a" || ns.Name == "c") && ns.SilentSince == nil {
			t.Errorf("status does not show %s as silent: %+v", ns.Name, ns)
		}
	}
}

// A donor that did not answer is asked only after the others: once a has
// been silent, a later shortage is served by c without asking a.
func TestSilentDonorAskedLast(t *testing.T) {
	n, b := silentDonorNetwork(t, 400*time.Millisecond, 300*time.Millisecond)
	// The first shortage: a is asked first, then c after the hedge delay.
	mustAlloc(t, b, key(1))
	if got := n.Sends("b", "a"); got != 1 {
		t.Fatalf("b asked a %d times for the first shortage, want 1", got)
	}
	// Wait for the request to a to time out, so a counts as silent.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := b.Status(nil)
		silent := false
		for _, ns := range st.Nodes {
			silent = silent || (ns.Name == "a" && ns.SilentSince != nil)
		}
		if silent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a never shown as silent")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Use up what c gave, then run short again.
	for i := 2; freeOfNode(b, "b") > 0; i++ {
		mustAlloc(t, b, key(i))
	}
	mustAlloc(t, b, key(1000))
	if got := n.Sends("b", "a"); got != 1 {
		t.Errorf("b asked the silent a again (%d requests in all) while c had space", got)
	}
}

func freeOfNode(a *ipalloc.Allocator, name string) uint64 {
	for _, ns := range a.Status(nil).Nodes {
		if ns.Name == name {
			return ns.Free
		}
	}
	return 0
}

// A node that receives a donation tells everyone its new free count at
// once, and a peer whose published count is 0 (perhaps old) is still
// asked when the others give nothing.
func TestDonorsFromFreshAndStaleCounts(t *testing.T) {
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.0.0.0/24")
	n.Add(t, ipalloc.Config{Self: "a", CIDR: cidr, Seed: []string{"a"}})
	b := n.Add(t, ipalloc.Config{Self: "b", CIDR: cidr, RequestTimeout: 400 * time.Millisecond})
	c := n.Add(t, ipalloc.Config{Self: "c", CIDR: cidr, RequestTimeout: 400 * time.Millisecond})
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	mustAlloc(t, c, key(1)) // a donates to c
	if f := freeOfNode(b, "c"); f == 0 {
		t.Errorf("b sees c with %d free addresses right after c got a donation, before any push/pull", f)
	}
	// c fills its space and says so, then frees it without telling anyone:
	// b still sees 0 free on c.
	var keys []ipalloc.Key
	for i := 2; freeOfNode(c, "c") > 0; i++ {
		mustAlloc(t, c, key(i))
		keys = append(keys, key(i))
	}
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, _, err := c.Release(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if f := freeOfNode(b, "c"); f != 0 {
		t.Fatalf("b sees c with %d free addresses, want the old 0", f)
	}
	n.SetSilent(func(from, to string) bool { return to == "a" }, 2*time.Second)
	addr := mustAlloc(t, b, key(1000))
	if o := c.Ranges()["b"]; len(o) == 0 {
		t.Errorf("b got %s, but c gave it nothing (c's view: %v)", addr, c.Ranges())
	}
}
