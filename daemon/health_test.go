package daemon

import (
	"net/netip"
	"slices"
	"testing"
)

func TestHealthAddrs(t *testing.T) {
	node := netip.MustParseAddr("192.0.2.7")
	for _, tt := range []struct {
		name, addr string
		node       netip.Addr
		want       []string
		wantErr    bool
	}{
		{"default: node address and loopback", ":6782", node, []string{"192.0.2.7:6782", "127.0.0.1:6782"}, false},
		{"other port", ":9100", node, []string{"192.0.2.7:9100", "127.0.0.1:9100"}, false},
		{"every interface, asked for", "0.0.0.0:6782", node, []string{"0.0.0.0:6782"}, false},
		{"one address, asked for", "10.1.2.3:6782", node, []string{"10.1.2.3:6782"}, false},
		{"IPv6 node", ":6782", netip.MustParseAddr("2001:db8::7"), []string{"[2001:db8::7]:6782", "[::1]:6782"}, false},
		{"node on loopback", ":6782", netip.MustParseAddr("127.0.0.1"), []string{"127.0.0.1:6782"}, false},
		{"no node address", ":6782", netip.Addr{}, nil, true},
		{"no port", "6782", node, nil, true},
		{"bad port", ":http-ish", node, nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := healthAddrs(tt.addr, tt.node)
			if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
				t.Errorf("healthAddrs(%q, %v) = %v, %v; want %v (error %v)", tt.addr, tt.node, got, err, tt.want, tt.wantErr)
			}
		})
	}
}
