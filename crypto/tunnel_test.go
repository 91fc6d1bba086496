package crypto

import (
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestAutoMTU(t *testing.T) {
	for _, tc := range []struct{ underlay, want int }{
		{1500, 1420}, {9001, 8921}, {1450, 1370},
	} {
		if got := AutoMTU(tc.underlay); got != tc.want {
			t.Errorf("AutoMTU(%d) = %d, want %d", tc.underlay, got, tc.want)
		}
	}
	if AutoMTU(1500) != DefaultMTU {
		t.Error("DefaultMTU is not AutoMTU(1500)")
	}
}

func TestOpenTunnelRejectsBadConfig(t *testing.T) {
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  TunnelConfig
		want string
	}{
		{"unknown mode", TunnelConfig{Mode: "fast", PrivateKey: key}, "unknown WireGuard mode"},
		{"long name", TunnelConfig{Name: "a-very-long-interface-name", PrivateKey: key}, "longer than"},
		{"no key", TunnelConfig{}, "no private key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tun, err := OpenTunnel(tc.cfg)
			if err == nil {
				tun.Close()
				t.Fatal("bad config accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}
