package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// healthAddrs resolves --metrics-addr to the addresses to listen on. An
// address with a host is taken as it is: "0.0.0.0:6782" is every
// interface, on purpose. Without a host (the default ":6782"), it is the
// node's underlay address (--listen, which the DaemonSet sets to the
// Node's address, where the kubelet's probes and Prometheus reach a
// hostNetwork pod) and loopback, for a look from the node itself, never
// every interface of the host. The first address is the one that must be
// served; any after it (loopback) are a convenience.
func healthAddrs(metricsAddr string, node netip.Addr) ([]string, error) {
	host, port, err := net.SplitHostPort(metricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %q: want host:port or :port: %w", metricsAddr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return nil, fmt.Errorf("--metrics-addr %q: bad port %q", metricsAddr, port)
	}
	if host != "" {
		return []string{metricsAddr}, nil
	}
	if !node.IsValid() {
		return nil, fmt.Errorf("--metrics-addr %q has no host and the node's address is unknown: give one, e.g. 127.0.0.1:%s", metricsAddr, port)
	}
	loop := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if node.Is6() {
		loop = netip.IPv6Loopback()
	}
	addrs := []string{net.JoinHostPort(node.String(), port)}
	if node != loop {
		addrs = append(addrs, net.JoinHostPort(loop.String(), port))
	}
	return addrs, nil
}
