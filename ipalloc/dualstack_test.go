package ipalloc_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/weftnet/weft/ipalloc"
	"github.com/weftnet/weft/ipalloc/ipalloctest"
)

var (
	v4Range = netip.MustParsePrefix("10.40.0.0/16")
	v6Range = netip.MustParsePrefix("fd10:40::/48")
)

// goldenState copies testdata/ipam-v1-ipv4.db, a state file written by the
// IPv4-only weft before dual stack (node a alone over 10.40.0.0/16, with
// c1/eth0 at 10.40.0.1 and c3/eth0 at 10.40.0.3; c2 was released), into a
// fresh state directory.
func goldenState(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "ipam-v1-ipv4.db"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ipalloc.StateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func storedKeys(t *testing.T, dir string) []string {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, ipalloc.StateFile), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var keys []string
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).ForEach(func(k, _ []byte) error {
			keys = append(keys, string(k))
			return nil
		})
	})
	return keys
}

func listed(a *ipalloc.Allocator) string {
	var b strings.Builder
	for _, al := range a.List() {
		b.WriteString(al.Key.String() + " " + al.Addr.String())
		if al.Addr6.IsValid() {
			b.WriteString(" " + al.Addr6.String())
		}
		b.WriteString("\n")
	}
	return b.String()
}

// TestStateFileIPv4Golden: a state file of today's IPv4-only nodes loads
// unchanged, with nothing of dual stack added to it.
func TestStateFileIPv4Golden(t *testing.T) {
	dir := goldenState(t)
	a := open(t, dir, "a", v4Range.String(), "a")
	want := "c1/eth0 10.40.0.1\nc3/eth0 10.40.0.3\n"
	if got := listed(a); got != want {
		t.Errorf("allocations of the golden file:\n%s\nwant\n%s", got, want)
	}
	if got := mustAlloc(t, a, key(4)); got != netip.MustParseAddr("10.40.0.4") {
		t.Errorf("next address %s, want 10.40.0.4 (after the last one handed out)", got)
	}
	if st := a.Status(nil); st.Range6.IsValid() || len(st.Nodes) != 1 || st.Nodes[0].Ranges6 != nil {
		t.Errorf("IPv4-only status shows IPv6 ranges: %+v", st)
	}
	a.Close()
	for _, k := range storedKeys(t, dir) {
		if k == "pairCIDR" {
			t.Errorf("an IPv4-only node wrote an IPv6 range into its state file")
		}
	}
}

// TestStateFileAddIPv6: an IPv4-only node restarted with an IPv6 range
// beside its IPv4 one keeps its allocations (now with their IPv6 pair);
// changing or dropping the IPv6 range later is refused with advice.
func TestStateFileAddIPv6(t *testing.T) {
	dir := goldenState(t)
	a, err := ipalloc.New(ipalloc.Config{Self: "a", CIDR: v4Range, PairCIDR: v6Range, Seed: []string{"a"}, StateDir: dir, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	want := "c1/eth0 10.40.0.1 fd10:40::1\nc3/eth0 10.40.0.3 fd10:40::3\n"
	if got := listed(a); got != want {
		t.Errorf("allocations:\n%s\nwant\n%s", got, want)
	}
	a.Close()
	for _, tc := range []struct {
		pair netip.Prefix
		want string
	}{
		{netip.MustParsePrefix("fd10:41::/48"), "set --pod-cidr 10.40.0.0/16,fd10:40::/48"},
		{netip.Prefix{}, "but --pod-cidr is now 10.40.0.0/16:"},
	} {
		_, err := ipalloc.New(ipalloc.Config{Self: "a", CIDR: v4Range, PairCIDR: tc.pair, Seed: []string{"a"}, StateDir: dir, Logger: quiet()})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("reopen with IPv6 range %v: %v, want an error saying %q", tc.pair, err, tc.want)
		}
	}
}

func TestPairConfig(t *testing.T) {
	for _, tc := range []struct {
		cidr, pair string
		wantErr    string
	}{
		{"10.40.0.0/16", "fd10:40::/112", ""},
		{"10.40.0.0/16", "fd10:40::/113", "use /112 or larger"},
		{"10.40.0.0/16", "10.41.0.0/16", "want an IPv6 range beside an IPv4 one"},
	} {
		_, err := ipalloc.New(ipalloc.Config{Self: "a", CIDR: netip.MustParsePrefix(tc.cidr), PairCIDR: netip.MustParsePrefix(tc.pair),
			Seed: []string{"a"}, StateDir: t.TempDir(), Logger: quiet()})
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("New(%s, %s) = %v, want error %q", tc.cidr, tc.pair, err, tc.wantErr)
		}
	}
}

// TestDualStackAllocate: every allocation has one address of each family,
// at the same offset of its range; no address of either family is handed
// out twice; a release frees both, and GC reports both.
func TestDualStackAllocate(t *testing.T) {
	a, err := ipalloc.New(ipalloc.Config{Self: "a", CIDR: netip.MustParsePrefix("10.40.0.0/24"), PairCIDR: v6Range,
		Seed: []string{"a"}, StateDir: t.TempDir(), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	seen4, seen6 := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	for i := 0; ; i++ {
		addr, err := a.Allocate(ctx, key(i), nil)
		if errors.Is(err, ipalloc.ErrFull) || errors.Is(err, ipalloc.ErrNoSpace) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		a6 := a.Paired(addr)
		if !v6Range.Contains(a6) || seen4[addr] || seen6[a6] {
			t.Fatalf("allocation %d: %s and %s (in range %v, seen %v %v)", i, addr, a6, v6Range.Contains(a6), seen4[addr], seen6[a6])
		}
		if a4 := addr.As4(); a6.As16()[15] != a4[3] {
			t.Errorf("%s paired with %s: want the same offset", addr, a6)
		}
		seen4[addr], seen6[a6] = true, true
	}
	if len(seen4) != 254 {
		t.Errorf("%d allocations in a /24, want 254", len(seen4))
	}
	addr, ok, err := a.Release(ctx, key(7))
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	for _, al := range a.List() {
		if al.Addr == addr || al.Addr6 == a.Paired(addr) {
			t.Errorf("released %s/%s still listed", addr, a.Paired(addr))
		}
	}
	again := mustAlloc(t, a, key(1000))
	if again != addr {
		t.Errorf("the only free address is %s, got %s", addr, again)
	}
	gone, err := a.GC(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, al := range gone {
		if al.Addr6 != a.Paired(al.Addr) || !al.Addr6.IsValid() {
			t.Errorf("GC reported %s with IPv6 %s, want %s", al.Addr, al.Addr6, a.Paired(al.Addr))
		}
	}
}

// TestDualStackDonation: a donation gives the receiver both families of
// the same addresses; the nodes' IPv6 ranges never overlap.
func TestDualStackDonation(t *testing.T) {
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("10.40.0.0/24")
	a := n.Add(t, ipalloc.Config{Self: "a", CIDR: cidr, PairCIDR: v6Range, Seed: []string{"a"}})
	b := n.Add(t, ipalloc.Config{Self: "b", CIDR: cidr, PairCIDR: v6Range})
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	addr := mustAlloc(t, b, key(1))
	r := b.Ranges()
	r6a, r6b := a.PairedPrefixes(r["a"]), b.PairedPrefixes(r["b"])
	if len(r6b) == 0 || !containsAddr(r6b, b.Paired(addr)) {
		t.Fatalf("b's IPv6 ranges %v lack its pod's %s", r6b, b.Paired(addr))
	}
	for _, p := range r6a {
		for _, q := range r6b {
			if p.Overlaps(q) {
				t.Errorf("IPv6 ranges of a %v and b %v overlap", r6a, r6b)
			}
		}
	}
	for _, p := range append(r6a, r6b...) {
		if !v6Range.Contains(p.Addr()) || p.Bits() < 128-8 {
			t.Errorf("IPv6 range %v outside the first /120 of %v", p, v6Range)
		}
	}
	st := a.Status(nil)
	for _, ns := range st.Nodes {
		if len(ns.Ranges6) != len(ns.Ranges) {
			t.Errorf("status of %s: ranges %v, IPv6 ranges %v", ns.Name, ns.Ranges, ns.Ranges6)
		}
	}
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// TestPairedPrefix pins the mapping of ring prefixes to IPv6 prefixes.
func TestPairedPrefix(t *testing.T) {
	a, err := ipalloc.New(ipalloc.Config{Self: "a", CIDR: v4Range, PairCIDR: v6Range, StateDir: t.TempDir(), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for in, want := range map[string]string{
		"10.40.0.0/16":   "fd10:40::/112",
		"10.40.128.0/17": "fd10:40::8000/113",
		"10.40.1.2/32":   "fd10:40::102/128",
		"10.41.0.0/24":   "invalid Prefix",
		"10.0.0.0/8":     "invalid Prefix",
	} {
		if got := a.PairedPrefix(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("PairedPrefix(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestIPv6Only: an allocator over an IPv6 range (an IPv6-only cluster)
// runs its ring over the range's first /96, hands out IPv6 addresses with
// no pair, donates, and keeps its allocations over a restart.
func TestIPv6Only(t *testing.T) {
	n := ipalloctest.NewNetwork()
	cidr := netip.MustParsePrefix("fd10:41::/48")
	dir := t.TempDir()
	a := n.Add(t, ipalloc.Config{Self: "a", CIDR: cidr, Seed: []string{"a"}, StateDir: dir})
	b := n.Add(t, ipalloc.Config{Self: "b", CIDR: cidr})
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	first := mustAlloc(t, a, key(1))
	if first != netip.MustParseAddr("fd10:41::1") || a.Paired(first).IsValid() {
		t.Errorf("first address %s (pair %s), want fd10:41::1 and no pair", first, a.Paired(first))
	}
	addr := mustAlloc(t, b, key(2))
	if !cidr.Contains(addr) || addr == first {
		t.Errorf("b got %s", addr)
	}
	if st := a.Status(nil); st.Range != netip.MustParsePrefix("fd10:41::/96") {
		t.Errorf("ring range %s, want fd10:41::/96", st.Range)
	}
	for o, ps := range a.Ranges() {
		for _, p := range ps {
			if !p.Addr().Is6() || p.Bits() < 96 || !cidr.Contains(p.Addr()) {
				t.Errorf("range %s of %s is not inside fd10:41::/96", p, o)
			}
		}
	}
	a = n.Restart(t, "a")
	if err := n.Gossip(); err != nil {
		t.Fatal(err)
	}
	if got := listed(a); got != "c1/eth0 fd10:41::1\n" {
		t.Errorf("allocations after a restart:\n%s", got)
	}
}
