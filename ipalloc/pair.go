package ipalloc

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/ipalloc/ring"
)

// Dual stack. A cluster with an IPv4 and an IPv6 pod range has one ring,
// over the IPv4 range (Config.CIDR), and every offset of it stands for two
// addresses: the IPv4 address at that offset of CIDR and the IPv6 address
// at the same offset of Config.PairCIDR. One allocation therefore hands a
// pod one address of each family at once, a release frees both, and a
// node's spans, donations and reclaims cover both families alike: there is
// no second allocation that could fail after the first, and no second
// ring, gossip message or claim protocol to keep in step with the first.
// The price: the IPv6 range is used only as far as the IPv4 range is large
// (a /16 of IPv4 with a /48 of IPv6 uses the /48's first /112), which
// leaves the IPv6 range no fuller than the IPv4 one.
//
// An IPv4-only cluster has no PairCIDR, and nothing of this applies: its
// state file and gossip are as before.

// checkPair reports what is wrong with pairing cidr with pair.
func checkPair(cidr, pair netip.Prefix) error {
	if !pair.IsValid() {
		return nil
	}
	switch {
	case !cidr.Addr().Is4() || !pair.Addr().Is6() || pair.Addr().Is4In6():
		return fmt.Errorf("ipalloc: pair range %v of %v: want an IPv6 range beside an IPv4 one", pair, cidr)
	case 128-pair.Bits() < 32-cidr.Bits():
		return fmt.Errorf("ipalloc: IPv6 range %v is smaller than the IPv4 range %v: use /%d or larger", pair, cidr, 128-(32-cidr.Bits()))
	}
	return nil
}

// addrAt is the address off addresses after base (within a prefix whose
// host part holds off, so there is no overflow out of it).
func addrAt(base netip.Addr, off uint64) netip.Addr {
	if base.Is4() {
		b := base.As4()
		v := binary.BigEndian.Uint32(b[:]) + uint32(off)
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	b := base.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	nlo := lo + off
	if nlo < lo {
		hi++
	}
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], nlo)
	return netip.AddrFrom16(b)
}

// offsetIn is the offset of a in the IPv4 prefix p, false if outside.
func offsetIn(p netip.Prefix, a netip.Addr) (uint64, bool) {
	if !a.Is4() || !p.Contains(a) {
		return 0, false
	}
	x, y := a.As4(), p.Masked().Addr().As4()
	return uint64(binary.BigEndian.Uint32(x[:]) - binary.BigEndian.Uint32(y[:])), true
}

// Paired returns the IPv6 address that comes with addr, an address of the
// ring's IPv4 range, in a dual-stack cluster; the zero Addr when the
// cluster is not dual stack or addr is outside the range.
func (a *Allocator) Paired(addr netip.Addr) netip.Addr {
	return pairedAddr(a.cfg.CIDR, a.cfg.PairCIDR, addr)
}

// PairedPrefix returns the IPv6 prefix that comes with p, a prefix inside
// the ring's IPv4 range, in a dual-stack cluster; the zero Prefix when the
// cluster is not dual stack or p is outside the range.
func (a *Allocator) PairedPrefix(p netip.Prefix) netip.Prefix {
	return pairedPrefix(a.cfg.CIDR, a.cfg.PairCIDR, p)
}

// PairCIDR is the IPv6 range paired with the ring's (Config.PairCIDR).
func (a *Allocator) PairCIDR() netip.Prefix { return a.cfg.PairCIDR }

func pairedAddr(cidr, pair netip.Prefix, addr netip.Addr) netip.Addr {
	if !pair.IsValid() {
		return netip.Addr{}
	}
	off, ok := offsetIn(cidr, addr)
	if !ok {
		return netip.Addr{}
	}
	return addrAt(pair.Masked().Addr(), off)
}

func pairedPrefix(cidr, pair netip.Prefix, p netip.Prefix) netip.Prefix {
	if !pair.IsValid() || !p.Addr().Is4() || p.Bits() < cidr.Bits() {
		return netip.Prefix{}
	}
	a := pairedAddr(cidr, pair, p.Masked().Addr())
	if !a.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a, 128-(32-p.Bits()))
}

// PairedPrefixes maps each prefix of ps (inside the ring's IPv4 range) to
// its IPv6 pair; empty when the cluster is not dual stack.
func (a *Allocator) PairedPrefixes(ps []netip.Prefix) []netip.Prefix {
	if !a.cfg.PairCIDR.IsValid() {
		return nil
	}
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if q := a.PairedPrefix(p); q.IsValid() {
			out = append(out, q)
		}
	}
	return out
}

// withPair fills in al.Addr6.
func (a *Allocator) withPair(al Allocation) Allocation {
	al.Addr6 = a.Paired(al.Addr)
	return al
}

// checkStoredPair compares the IPv6 range the state file was written with
// (stored; zero if none) with the configured one. Adding an IPv6 range to
// an IPv4-only node is allowed and recorded (pods made before it keep
// IPv4 only until they are made again); changing or dropping it is not,
// since the IPv6 addresses of running pods would then belong to no range.
func (a *Allocator) checkStoredPair(stored netip.Prefix) error {
	want := a.cfg.PairCIDR
	switch {
	case stored == want:
		return nil
	case !stored.IsValid():
		return a.store.savePair(want)
	}
	flag := a.cfg.CIDR.String()
	if want.IsValid() {
		flag += "," + want.String()
	}
	return fmt.Errorf("IPAM state file %s was written for the IPv6 pod range %s beside %s, but --pod-cidr is now %s: "+
		"set --pod-cidr %s,%s, or move the file away to start empty "+
		"(addresses of the pods running on this node may then be handed out again)",
		a.store.path, stored, a.cfg.CIDR, flag, a.cfg.CIDR, stored)
}

// ringRange is the range the ring spans for the pod range cidr: cidr
// itself, but for an IPv6 range larger than the ring's 2^32 addresses its
// first /96 (an IPv6-only cluster with a /48 or /64 hands out addresses
// of its first /96).
func ringRange(cidr netip.Prefix) netip.Prefix {
	if cidr.IsValid() && cidr.Addr().Is6() && !cidr.Addr().Is4In6() && cidr.Bits() < 128-ring.MaxHostBits {
		return netip.PrefixFrom(cidr.Masked().Addr(), 128-ring.MaxHostBits)
	}
	return cidr
}
