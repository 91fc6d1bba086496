package tests

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// addrOnBridge gives the bridge named br in the network namespace at path
// the address p, so a server there (the lab's kube-apiserver) is on the
// same L2 as the nodes.
func addrOnBridge(path, br string, p netip.Prefix) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	link, err := h.LinkByName(br)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", br, path, err)
	}
	addr, err := netlink.ParseAddr(p.String())
	if err != nil {
		return err
	}
	if err := h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", p, br, err)
	}
	return nil
}
