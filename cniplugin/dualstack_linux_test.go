package cniplugin

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/cniplugin/cniplugintest"
)

// TestAddDualStack: with a dual-stack daemon, on a node whose new
// interfaces start without IPv6, the result lists both
// addresses with their gateways and a default route per family; the pod
// holds both addresses and both default routes, the node routes both to
// it, two pods reach each other over both families, CHECK finds it all as
// configured, and DEL takes it all away.
func TestAddDualStack(t *testing.T) {
	n := newNode(t, cniplugintest.Config{Pool6: netip.MustParsePrefix("fd10:32::/64")})
	// A node whose new interfaces start without IPv6, as the lab's nodes
	// (and some hosts) do: the plugin turns it on for the host end.
	if err := n.ns.Do(func(ns.NetNS) error {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0o644); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	list := n.conflist(t, "1.0.0", "")
	podA, podB := newNetns(t), newNetns(t)
	r := addOK(t, n, list, "pod-a", podA)
	var ips, routes []string
	for _, ip := range r.IPs {
		ips = append(ips, fmt.Sprintf("%s gw %s", ip.Address.String(), ip.Gateway))
	}
	for _, rt := range r.Routes {
		routes = append(routes, fmt.Sprintf("%s via %s", rt.Dst.String(), rt.GW))
	}
	if got, want := strings.Join(ips, ", "), "10.32.0.1/32 gw 169.254.1.1, fd10:32::1/128 gw fe80::1"; got != want {
		t.Errorf("result IPs %s, want %s", got, want)
	}
	if got, want := strings.Join(routes, ", "), "0.0.0.0/0 via 169.254.1.1, ::/0 via fe80::1"; got != want {
		t.Errorf("result routes %s, want %s", got, want)
	}
	err := podA.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, _ := netlinksafe.AddrList(l, netlink.FAMILY_V6)
		var global []string
		for _, a := range addrs {
			if !a.IP.IsLinkLocalUnicast() {
				global = append(global, a.IPNet.String())
			}
		}
		if strings.Join(global, " ") != "fd10:32::1/128" {
			return fmt.Errorf("eth0 IPv6 addresses %v, want fd10:32::1/128", global)
		}
		rs, _ := netlinksafe.RouteList(l, netlink.FAMILY_V6)
		for _, rt := range rs {
			if (rt.Dst == nil || rt.Dst.String() == "::/0") && rt.Gw.String() == "fe80::1" {
				return nil
			}
		}
		return fmt.Errorf("no IPv6 default route via fe80::1 in the pod: %v", rs)
	})
	if err != nil {
		t.Fatal(err)
	}
	host := HostVethName("pod-a", "eth0")
	err = n.in(func() error {
		l, err := netlinksafe.LinkByName(host)
		if err != nil {
			return err
		}
		rs, _ := netlinksafe.RouteList(l, netlink.FAMILY_V6)
		for _, rt := range rs {
			if rt.Dst != nil && rt.Dst.String() == "fd10:32::1/128" {
				return nil
			}
		}
		return fmt.Errorf("no host route to the pod's IPv6 address: %v", rs)
	})
	if err != nil {
		t.Fatal(err)
	}
	rb := addOK(t, n, list, "pod-b", podB)
	if len(rb.IPs) != 2 {
		t.Fatalf("pod-b result IPs %v", rb.IPs)
	}
	if err := ping(t, podA, rb.IPs[1].Address.IP.String()); err != nil {
		t.Errorf("pod-a to pod-b over IPv6: %v", err)
	}
	if err := ping(t, podB, r.IPs[1].Address.IP.String()); err != nil {
		t.Errorf("pod-b to pod-a over IPv6: %v", err)
	}
	if err := ping(t, podA, rb.IPs[0].Address.IP.String()); err != nil {
		t.Errorf("pod-a to pod-b over IPv4: %v", err)
	}
	if err := n.in(func() error {
		return n.cni.CheckNetworkList(t.Context(), list, runtimeConf("pod-a", podA))
	}); err != nil {
		t.Errorf("CHECK of a dual-stack pod: %v", err)
	}
	if err := n.in(func() error {
		return n.cni.DelNetworkList(t.Context(), list, runtimeConf("pod-a", podA))
	}); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if len(n.daemon.Allocations()) != 1 {
		t.Errorf("after DEL of pod-a, the daemon holds %v", n.daemon.Allocations())
	}
	err = podA.Do(func(ns.NetNS) error {
		if _, err := netlinksafe.LinkByName("eth0"); err == nil {
			return fmt.Errorf("eth0 still in the pod after DEL")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAddIPv6Only: with an IPv6-only daemon the pod gets its IPv6 address
// and default route and no IPv4 address; two pods reach each other;
// CHECK passes and DEL cleans up.
func TestAddIPv6Only(t *testing.T) {
	n := newNode(t, cniplugintest.Config{Pool: netip.MustParsePrefix("fd10:41::/112")})
	if err := n.ns.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	list := n.conflist(t, "1.0.0", "")
	podA, podB := newNetns(t), newNetns(t)
	ra := addOK(t, n, list, "pod-a", podA)
	rb := addOK(t, n, list, "pod-b", podB)
	if len(ra.IPs) != 1 || ra.IPs[0].Address.String() != "fd10:41::1/128" || len(ra.Routes) != 1 || ra.Routes[0].Dst.String() != "::/0" {
		t.Fatalf("result IPs %v routes %v, want fd10:41::1/128 and ::/0 only", ra.IPs, ra.Routes)
	}
	err := podA.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		if v4, _ := netlinksafe.AddrList(l, netlink.FAMILY_V4); len(v4) != 0 {
			return fmt.Errorf("IPv4 addresses %v in an IPv6-only pod", v4)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(t, podA, rb.IPs[0].Address.IP.String()); err != nil {
		t.Errorf("pod-a to pod-b: %v", err)
	}
	if err := n.in(func() error {
		return n.cni.CheckNetworkList(t.Context(), list, runtimeConf("pod-a", podA))
	}); err != nil {
		t.Errorf("CHECK of an IPv6-only pod: %v", err)
	}
	if err := n.in(func() error {
		return n.cni.DelNetworkList(t.Context(), list, runtimeConf("pod-a", podA))
	}); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}
