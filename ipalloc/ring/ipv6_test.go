package ring

import (
	"net/netip"
	"strings"
	"testing"
)

// TestIPv6Ring: a ring over an IPv6 range (an IPv6-only cluster) splits,
// maps offsets to addresses and back, cuts spans into prefixes, and
// survives its wire format as an IPv4 ring does.
func TestIPv6Ring(t *testing.T) {
	cidr := netip.MustParsePrefix("fd10:41::/96")
	r, err := NewGenesis(cidr, []string{"a", "b", "c"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Size() != 1<<32 {
		t.Errorf("size %d, want 2^32", r.Size())
	}
	want := map[string]string{
		"a": "[fd10:41::/97]",
		"b": "[fd10:41::8000:0/98]",
		"c": "[fd10:41::c000:0/98]",
	}
	byOwner := r.CIDRsByOwner()
	for o, w := range want {
		var s []string
		for _, p := range byOwner[o] {
			s = append(s, p.String())
		}
		if got := "[" + strings.Join(s, " ") + "]"; got != w {
			t.Errorf("CIDRs of %s: %s, want %s", o, got, w)
		}
	}
	for _, off := range []uint64{0, 1, 0xffff, 1 << 31, 1<<32 - 1} {
		a := r.Addr(off)
		if !cidr.Contains(a) {
			t.Errorf("Addr(%d) = %s, outside %s", off, a, cidr)
		}
		if back, ok := r.Offset(a); !ok || back != off {
			t.Errorf("Offset(Addr(%d) = %s) = %d, %v", off, a, back, ok)
		}
	}
	for _, a := range []string{"fd10:42::1", "10.0.0.1", "::ffff:10.0.0.1"} {
		if _, ok := r.Offset(netip.MustParseAddr(a)); ok {
			t.Errorf("Offset(%s) in a ring over %s", a, cidr)
		}
	}
	if o := r.OwnerOf(netip.MustParseAddr("fd10:41::8000:5")); o != "b" {
		t.Errorf("owner of fd10:41::8000:5: %q, want b", o)
	}
	got, origin, err := Decode(r.Encode("a"))
	if err != nil || origin != "a" || !got.Equal(r) {
		t.Fatalf("decode(encode) of an IPv6 ring: %v, %q, equal %v", err, origin, got != nil && got.Equal(r))
	}
	// An IPv4 ring's encoding is unchanged by IPv6 support: flags without
	// the IPv6 bit, a 4-byte prefix.
	r4, _ := NewGenesis(netip.MustParsePrefix("10.0.0.0/24"), []string{"a"})
	if b := r4.Encode("a"); b[3]&4 != 0 || b[4] != 10 || b[8] != 24 {
		t.Errorf("IPv4 ring encoding starts % x", b[:9])
	}
	for _, bad := range []string{"fd10:41::/95", "fd10:41::/127"} {
		if _, err := NewEmpty(netip.MustParsePrefix(bad)); err == nil || !strings.Contains(err.Error(), "between /96 and /126") {
			t.Errorf("NewEmpty(%s): %v, want an error naming /96 to /126", bad, err)
		}
	}
}
