package daemon

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParsePodCIDRs reads --pod-cidr: one range, or two separated by a comma,
// at most one per family ("10.32.0.0/12" or "10.32.0.0/12,fd10:32::/48").
// The ranges come back masked, the IPv4 one first. Sizes are checked by
// Config.Validate, which knows how the two families pair up.
func ParsePodCIDRs(s string) ([]netip.Prefix, error) {
	parts := strings.Split(s, ",")
	if len(parts) > 2 {
		return nil, fmt.Errorf("--pod-cidr %q: want one range, or two separated by a comma (one IPv4, one IPv6)", s)
	}
	var out []netip.Prefix
	for _, part := range parts {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("--pod-cidr %q: empty range; want a prefix such as %s", s, DefaultPodCIDR)
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("--pod-cidr %q: %w", s, err)
		}
		if p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return nil, fmt.Errorf("--pod-cidr %q: %s is not a plain IPv4 or IPv6 prefix", s, part)
		}
		out = append(out, p.Masked())
	}
	if len(out) == 2 {
		if out[0].Addr().Is4() == out[1].Addr().Is4() {
			return nil, fmt.Errorf("--pod-cidr %q: two %s ranges; give at most one IPv4 and one IPv6 range", s, familyName(out[0].Addr()))
		}
		if out[1].Addr().Is4() {
			out[0], out[1] = out[1], out[0]
		}
	}
	return out, nil
}

func familyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// SetPodCIDRs puts the ranges of ParsePodCIDRs in c: the first is the
// address ring's (PodCIDR), an IPv6 range beside an IPv4 one is PodCIDR6.
func (c *Config) SetPodCIDRs(ps []netip.Prefix) {
	c.PodCIDR, c.PodCIDR6 = netip.Prefix{}, netip.Prefix{}
	if len(ps) > 0 {
		c.PodCIDR = ps[0]
	}
	if len(ps) > 1 {
		c.PodCIDR6 = ps[1]
	}
}

// PodCIDRs returns the pod ranges, the ring's first.
func (c Config) PodCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{c.PodCIDR, c.PodCIDR6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// hasIPv6 reports whether pods get IPv6 addresses (dual stack or IPv6
// only).
func (c Config) hasIPv6() bool { return c.PodCIDR6.IsValid() || c.PodCIDR.Addr().Is6() }

// validatePodCIDRs checks the sizes of the pod ranges. Each address of the
// ring's range (PodCIDR) comes with the address at the same offset of
// PodCIDR6 (see ipalloc.Config.PairCIDR), so the IPv6 range must be at
// least as large as the IPv4 one. An IPv6-only ring uses at most the first
// 2^32 addresses of its range.
func (c Config) validatePodCIDRs() error {
	p := c.PodCIDR
	switch {
	case !p.IsValid():
		return fmt.Errorf("--pod-cidr %v: want an IPv4 prefix such as %s, optionally with an IPv6 one after a comma", p, DefaultPodCIDR)
	case p.Addr().Is4() && p.Bits() > 30:
		return fmt.Errorf("--pod-cidr %v is too small: use /30 or larger", p)
	case p.Addr().Is6() && p.Bits() > 126:
		return fmt.Errorf("--pod-cidr %v is too small: use /126 or larger", p)
	}
	p6 := c.PodCIDR6
	if !p6.IsValid() {
		return nil
	}
	if !p.Addr().Is4() || !p6.Addr().Is6() {
		return fmt.Errorf("--pod-cidr %v,%v: a dual-stack cluster wants one IPv4 and one IPv6 range", p, p6)
	}
	if hostBits4, hostBits6 := 32-p.Bits(), 128-p6.Bits(); hostBits6 < hostBits4 {
		return fmt.Errorf("--pod-cidr %v,%v: the IPv6 range is too small: every IPv4 pod address is paired with one IPv6 address, "+
			"so use /%d or larger for IPv6 (a /64 or /48 is usual)", p, p6, 128-hostBits4)
	}
	return nil
}
