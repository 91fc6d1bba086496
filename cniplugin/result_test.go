package cniplugin

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/api"
)

func testAllocation() api.Allocation {
	return api.Allocation{
		Attachment: api.Attachment{ContainerID: "c1", IfName: "eth0"},
		Address:    netip.MustParsePrefix("10.32.0.5/32"),
		Gateway:    netip.MustParseAddr("169.254.1.1"),
		MTU:        1420,
		PodCIDR:    netip.MustParsePrefix("10.32.0.0/12"),
	}
}

func TestResultVersions(t *testing.T) {
	r := newResult(testAllocation(),
		link{Name: "wv0123456789abc", MAC: "02:00:00:00:00:01"},
		link{Name: "eth0", MAC: "02:00:00:00:00:02", Sandbox: "/run/netns/p"})
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			out, err := convertResult(r, v)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := out.PrintTo(&buf); err != nil {
				t.Fatal(err)
			}
			var got struct {
				CNIVersion string `json:"cniVersion"`
				Interfaces []struct {
					Name, Mac, Sandbox string
				}
				IPs []struct {
					Version   string `json:"version"`
					Address   string `json:"address"`
					Gateway   string `json:"gateway"`
					Interface *int   `json:"interface"`
				} `json:"ips"`
				Routes []struct{ Dst, GW string }
			}
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if got.CNIVersion != v {
				t.Errorf("cniVersion %q, want %q", got.CNIVersion, v)
			}
			if len(got.Interfaces) != 2 || got.Interfaces[1].Name != "eth0" || got.Interfaces[1].Sandbox != "/run/netns/p" || got.Interfaces[0].Sandbox != "" {
				t.Errorf("interfaces %+v", got.Interfaces)
			}
			if len(got.IPs) != 1 || got.IPs[0].Address != "10.32.0.5/32" || got.IPs[0].Gateway != "169.254.1.1" ||
				got.IPs[0].Interface == nil || *got.IPs[0].Interface != 1 {
				t.Errorf("ips %s", buf.Bytes())
			}
			if v == "0.4.0" && got.IPs[0].Version != "4" {
				t.Errorf("0.4.0 result lacks the IP version: %s", buf.Bytes())
			}
			if len(got.Routes) != 1 || got.Routes[0].Dst != "0.0.0.0/0" || got.Routes[0].GW != "169.254.1.1" {
				t.Errorf("routes %+v", got.Routes)
			}
		})
	}
	if _, err := convertResult(r, "0.3.0-bogus"); err == nil {
		t.Error("convertResult to a bogus version succeeded")
	}
}

func TestValidAllocation(t *testing.T) {
	good := testAllocation()
	if err := validAllocation(good); err != nil {
		t.Fatal(err)
	}
	bad := []func(*api.Allocation){
		func(a *api.Allocation) { a.Address = netip.Prefix{} },
		func(a *api.Allocation) { a.Address = netip.MustParsePrefix("10.32.0.0/24") },
		func(a *api.Allocation) { a.Address = netip.MustParsePrefix("fd00::1/128") },
		func(a *api.Allocation) { a.Gateway = netip.Addr{} },
		func(a *api.Allocation) { a.MTU = 10 },
	}
	for i, f := range bad {
		a := testAllocation()
		f(&a)
		if validAllocation(a) == nil {
			t.Errorf("case %d: %+v accepted", i, a)
		}
	}
}
