package crypto

import (
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/weftnet/weft/crypto/cryptotest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestFakeWGClientMatchesWireGuardGo applies the same configurations to a
// real userspace device and to cryptotest's fake, and compares what they
// report after each step.
func TestFakeWGClientMatchesWireGuardGo(t *testing.T) {
	needRoot(t)
	n := newNS(t)
	name := uniqueName(t)
	t.Cleanup(func() { n.Do(func(ns.NetNS) error { return DestroyTunnel(name) }) })
	key := fixedKey(t, 9)
	real := startChild(t, n, childConfig{Name: name, Mode: ModeUserspace, PrivateKey: key.String()})
	if real.ready.Err != "" {
		t.Fatalf("open tunnel: %s", real.ready.Err)
	}
	fake := cryptotest.NewWGClient(name)
	if err := fake.ConfigureDevice(name, wgtypes.Config{PrivateKey: &key}); err != nil {
		t.Fatal(err)
	}
	for i, step := range configSteps(t) {
		real.configure(step)
		if err := fake.ConfigureDevice(name, step); err != nil {
			t.Fatal(err)
		}
		want := real.device()
		got, err := fake.Device(name)
		if err != nil {
			t.Fatal(err)
		}
		if g, w := renderDevice(got), renderDevice(want); g != w {
			t.Errorf("after step %d the fake has\n%s\nwireguard-go has\n%s", i+1, g, w)
		}
	}
}
