package meshtest

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/weftnet/weft/mesh"
)

// TestSimNetworkMeshes: real meshes on a SimNetwork find each other in
// virtual time, and one that stops is declared gone by the others.
func TestSimNetworkMeshes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var simnet SimNetwork
		var meshes []*mesh.Mesh
		for i := range 3 {
			tr, err := simnet.Transport(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), mesh.DefaultPort))
			if err != nil {
				t.Fatal(err)
			}
			cfg := mesh.DefaultConfig()
			cfg.NodeName = string(rune('a' + i))
			cfg.Key = []byte("0123456789abcdef0123456789abcdef")
			cfg.Transport = tr
			if i > 0 {
				cfg.Seeds = []string{"10.0.0.1"}
			}
			m, err := mesh.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			meshes = append(meshes, m)
		}
		if _, err := simnet.Transport(netip.MustParseAddrPort("10.0.0.1:6783")); err == nil {
			t.Error("a second transport at a taken address was created")
		}
		var wg sync.WaitGroup
		cancels := make([]context.CancelFunc, len(meshes))
		for i, m := range meshes {
			ctx, cancel := context.WithCancel(context.Background())
			cancels[i] = cancel
			wg.Go(func() { _ = m.Run(ctx) })
			wg.Go(func() {
				for range m.Events() {
				}
			})
		}
		start := time.Now()
		for meshes[0].Health().Members != 2 || meshes[1].Health().Members != 2 || meshes[2].Health().Members != 2 {
			if time.Since(start) > 10*time.Second {
				t.Fatal("3 meshes on the simulated network did not meet in 10 s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancels[2]()
		for meshes[0].Health().Members != 1 || meshes[1].Health().Members != 1 {
			if time.Since(start) > 20*time.Second {
				t.Fatal("the others still list a mesh that left")
			}
			time.Sleep(10 * time.Millisecond)
		}
		dialer, _ := simnet.Transport(netip.MustParseAddrPort("10.0.0.9:6783"))
		for {
			c, err := dialer.DialTimeout("10.0.0.3:6783", time.Second)
			if errors.Is(err, ErrSimRefused) {
				break
			}
			if err == nil {
				c.Close()
			}
			if time.Since(start) > 30*time.Second {
				t.Fatalf("dial to a stopped mesh's transport: %v, want ErrSimRefused", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		_ = dialer.Shutdown()
		cancels[0]()
		cancels[1]()
		wg.Wait()
		time.Sleep(time.Minute) // memberlist's timers end after its shutdown
	})
}
