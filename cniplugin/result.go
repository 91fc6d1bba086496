package cniplugin

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/api"
)

// link is what the result says about one end of the veth.
type link struct {
	Name    string
	MAC     string
	Sandbox string // the netns path for the pod's end, "" on the host
}

// newResult is the CNI result (in the newest version) of one attachment:
// the host end first, then the pod's interface holding the address, and the
// default route through the gateway; in a dual-stack cluster the IPv6
// address and default route follow the IPv4 ones (and stand alone in an
// IPv6-only cluster).
func newResult(alloc api.Allocation, host, pod link) *current.Result {
	podIdx := 1
	r := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: host.Name, Mac: host.MAC},
			{Name: pod.Name, Mac: pod.MAC, Sandbox: pod.Sandbox},
		},
	}
	if alloc.Address.IsValid() {
		gw := net.IP(alloc.Gateway.AsSlice())
		r.IPs = append(r.IPs, &current.IPConfig{Interface: &podIdx, Address: prefixIPNet(alloc.Address), Gateway: gw})
		r.Routes = append(r.Routes, &types.Route{Dst: prefixIPNet(netip.MustParsePrefix("0.0.0.0/0")), GW: gw})
	}
	if alloc.Address6.IsValid() {
		gw6 := net.IP(alloc.Gateway6.AsSlice())
		r.IPs = append(r.IPs, &current.IPConfig{Interface: &podIdx, Address: prefixIPNet(alloc.Address6), Gateway: gw6})
		r.Routes = append(r.Routes, &types.Route{Dst: prefixIPNet(netip.MustParsePrefix("::/0")), GW: gw6})
	}
	return r
}

func prefixIPNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// convertResult converts r to the result version of cniVersion.
func convertResult(r *current.Result, cniVersion string) (types.Result, error) {
	out, err := r.GetAsVersion(cniVersion)
	if err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("cannot give the result as cniVersion %s: %v", cniVersion, err),
			"use cniVersion 1.0.0 in the network config")
	}
	return out, nil
}

// validAllocation checks what the daemon handed out before the plugin
// configures it: an IPv4 address, an IPv6 one (IPv6 only) or both (dual
// stack), each with its gateway.
func validAllocation(a api.Allocation) error {
	switch {
	case !a.Address.IsValid() && !a.Address6.IsValid():
		return fmt.Errorf("the weft daemon gave the pod no address")
	case a.Address.IsValid() && (!a.Address.Addr().Is4() || a.Address.Bits() != 32):
		return fmt.Errorf("the weft daemon gave the pod address %q; want an IPv4 /32", a.Address)
	case a.Address.IsValid() && (!a.Gateway.IsValid() || !a.Gateway.Is4()):
		return fmt.Errorf("the weft daemon gave the pod gateway %q; want an IPv4 address", a.Gateway)
	case a.Address6.IsValid() && (!a.Address6.Addr().Is6() || a.Address6.Addr().Is4In6() || a.Address6.Bits() != 128):
		return fmt.Errorf("the weft daemon gave the pod IPv6 address %q; want an IPv6 /128", a.Address6)
	case a.Address6.IsValid() && (!a.Gateway6.IsValid() || !a.Gateway6.Is6()):
		return fmt.Errorf("the weft daemon gave the pod IPv6 gateway %q; want an IPv6 address", a.Gateway6)
	case a.MTU != 0 && (a.MTU < MinMTU || a.MTU > MaxMTU):
		return fmt.Errorf("the weft daemon gave the pod MTU %d; want %d to %d", a.MTU, MinMTU, MaxMTU)
	}
	return nil
}
