package cniplugintest

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
)

func TestDaemon(t *testing.T) {
	d, err := Start(Config{Pool: netip.MustParsePrefix("10.1.0.0/30"), Capacity: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c := api.NewClient(d.Socket(), 2*time.Second)
	ctx := context.Background()
	alloc := func(id string) (api.Allocation, error) {
		var a api.Allocation
		err := c.Do(ctx, http.MethodPost, api.PathCNIAllocate, api.Attachment{ContainerID: id, IfName: "eth0"}, &a)
		return a, err
	}
	a1, err := alloc("a")
	if err != nil || a1.Address.String() != "10.1.0.1/32" || a1.Gateway.String() != "169.254.1.1" || a1.MTU != 1420 {
		t.Fatalf("allocate a: %+v %v", a1, err)
	}
	if again, _ := alloc("a"); again.Address != a1.Address {
		t.Errorf("allocate is not idempotent: %v then %v", a1.Address, again.Address)
	}
	if b, err := alloc("b"); err != nil || b.Address == a1.Address {
		t.Fatalf("allocate b: %+v %v", b, err)
	}
	var apiErr *api.Error
	if _, err := alloc("c"); !errors.As(err, &apiErr) || apiErr.Code != api.CodeFull {
		t.Errorf("allocate beyond capacity: %v", err)
	}
	if err := c.Do(ctx, http.MethodPost, api.PathCNICheck, api.Attachment{ContainerID: "zz", IfName: "eth0"}, nil); !errors.As(err, &apiErr) || apiErr.Code != api.CodeUnknown {
		t.Errorf("check of an unknown attachment: %v", err)
	}
	var gc api.GCResponse
	if err := c.Do(ctx, http.MethodPost, api.PathCNIGC, api.GCRequest{Valid: []api.Attachment{{ContainerID: "a", IfName: "eth0"}}}, &gc); err != nil {
		t.Fatal(err)
	}
	if len(gc.Released) != 1 || gc.Released[0].ContainerID != "b" {
		t.Errorf("GC released %+v", gc.Released)
	}
	if err := c.Do(ctx, http.MethodPost, api.PathCNIRelease, api.Attachment{ContainerID: "a", IfName: "eth0"}, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(d.Allocations()); n != 0 {
		t.Errorf("%d allocations left", n)
	}
	d.SetReady(false, "joining")
	var r api.Ready
	if err := c.Do(ctx, http.MethodGet, api.PathReady, nil, &r); err != nil || r.Ready || r.Reason != "joining" {
		t.Errorf("ready: %+v %v", r, err)
	}
	if d.Calls(api.PathCNIAllocate) != 4 {
		t.Errorf("allocate calls %d, want 4", d.Calls(api.PathCNIAllocate))
	}
	d.Close()
	if err := c.Do(ctx, http.MethodGet, api.PathReady, nil, &r); !errors.Is(err, api.ErrDaemonNotRunning) {
		t.Errorf("after Close: %v", err)
	}
}
