package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/cniplugin"
	"github.com/weftnet/weft/netlab"
)

// The orders of calls a runtime makes: ADD again for the same attachment
// gives the same result, DEL is idempotent, CHECK reports a pod whose
// network was changed, and STATUS fails while the daemon has no address
// space.
func TestCNIRepeatedCalls(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 1)
	n := nodes[0]
	base := steadySnapshot(t, ctx, n)
	cni := n.CNIConfig()

	a, err := n.AddPod(ctx, netlab.PodConfig{Name: "again"})
	if err != nil {
		t.Fatal(err)
	}
	with := steadySnapshot(t, ctx, n)
	res, err := cni.AddNetworkList(ctx, a.NetConfList(), a.RuntimeConf())
	if err != nil {
		t.Fatalf("ADD again for the same attachment: %v", err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 || r.IPs[0].Address.IP.String() != a.IP().String() {
		t.Errorf("ADD again gave %v (%v), first ADD %s", res, err, a.IP())
	}
	if err := a.Check(ctx); err != nil {
		t.Errorf("CHECK after a second ADD: %v", err)
	}
	if again, err := snapshot(ctx, n); err != nil {
		t.Fatal(err)
	} else if d := with.diff(again); d != "" {
		t.Errorf("the second ADD changed the node:\n%s", d)
	}

	for i := range 3 {
		if err := cni.DelNetworkList(ctx, a.NetConfList(), a.RuntimeConf()); err != nil {
			t.Errorf("DEL number %d: %v", i+1, err)
		}
	}
	if err := a.Delete(ctx); err != nil {
		t.Errorf("DEL and netns removal after three DELs: %v", err)
	}
	if after, err := snapshot(ctx, n); err != nil {
		t.Fatal(err)
	} else if d := base.diff(after); d != "" {
		t.Errorf("the node differs after ADD, ADD, DEL x4:\n%s", d)
	}

	// CHECK finds a pod whose default route is gone.
	b, err := n.AddPod(ctx, netlab.PodConfig{Name: "changed"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := netns.GetFromPath(b.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: all}, netlink.RT_FILTER_DST)
	if err != nil || len(routes) == 0 {
		t.Fatalf("the pod has no default route: %v", err)
	}
	for _, rt := range routes {
		if err := nl.RouteDel(&rt); err != nil {
			t.Fatal(err)
		}
	}
	err = b.Check(ctx)
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != uint(cniplugin.ErrCheckMismatch) {
		t.Errorf("CHECK of a pod without its default route: %v; want code %d", err, cniplugin.ErrCheckMismatch)
	} else {
		t.Logf("CHECK says: %s", ce.Msg)
	}
	if err := b.Delete(ctx); err != nil {
		t.Fatal(err)
	}

	// A daemon with no address space yet (not in the seed list, alone):
	// STATUS fails with code 50 and says why.
	lone, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := lone.StartDaemon("--peers", lone.Addr.String(), "--ipalloc-init", "seed=somebody-else",
		"--wg-mode", "userspace", "--metrics-addr", ""); err != nil {
		t.Fatal(err)
	}
	if err := lone.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	var ready api.Ready
	poll(t, ctx, func() error {
		return daemonAPI(lone).Do(ctx, http.MethodGet, api.PathReady, nil, &ready)
	})
	if ready.Ready {
		t.Fatalf("a daemon outside the seed list, alone, says it is ready")
	}
	st := runPlugin(t, ctx, lab, lone, map[string]string{"CNI_COMMAND": "STATUS"}, pluginConf("1.1.0", lone.SocketPath(), nil))
	checkCNIError(t, st, types.ErrPluginNotAvailable, "not ready")
}

// DEL succeeds when the pod's netns is already gone and when the daemon no
// longer holds the allocation, and the node ends as before.
func TestCNIDelAfterNetnsOrAllocationGone(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 1)
	n := nodes[0]
	base := steadySnapshot(t, ctx, n)

	gone, err := n.AddPod(ctx, netlab.PodConfig{Name: "netns-gone"})
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(gone.Netns, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(gone.Netns); err != nil {
		t.Fatal(err)
	}
	if err := gone.Delete(ctx); err != nil {
		t.Errorf("DEL with the netns gone: %v", err)
	}

	lost, err := n.AddPod(ctx, netlab.PodConfig{Name: "allocation-gone"})
	if err != nil {
		t.Fatal(err)
	}
	if err := daemonAPI(n).Do(ctx, http.MethodPost, api.PathCNIRelease,
		api.Attachment{ContainerID: lost.ContainerID, IfName: lost.IfName}, nil); err != nil {
		t.Fatal(err)
	}
	if err := lost.Delete(ctx); err != nil {
		t.Errorf("DEL with the allocation gone: %v", err)
	}
	poll(t, ctx, func() error {
		s, err := snapshot(ctx, n)
		if err != nil {
			return err
		}
		if d := base.diff(s); d != "" {
			return fmt.Errorf("the node is not as before:\n%s", d)
		}
		return nil
	})
}

// ADD through the plugin binary answers in the cniVersion of the config
// (0.4.0, 1.0.0, 1.1.0), and DEL of each leaves the node as before.
func TestCNIResultVersions(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 1)
	n := nodes[0]
	holder, err := n.AddPod(ctx, netlab.PodConfig{Name: "holder"})
	if err != nil {
		t.Fatal(err)
	}
	base := steadySnapshot(t, ctx, n)
	for i, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			env := map[string]string{
				"CNI_CONTAINERID": fmt.Sprintf("version%d", i),
				"CNI_NETNS":       holder.Netns,
				"CNI_IFNAME":      fmt.Sprintf("eth%d", i+1),
			}
			conf := pluginConf(v, n.SocketPath(), nil)
			env["CNI_COMMAND"] = "ADD"
			r := runPlugin(t, ctx, lab, n, env, conf)
			if r.ExitCode != 0 {
				t.Fatalf("ADD with cniVersion %s: exit %d: %s", v, r.ExitCode, r.Stdout)
			}
			var res struct {
				CNIVersion string `json:"cniVersion"`
				IPs        []struct {
					Version string `json:"version"`
					Address string `json:"address"`
				} `json:"ips"`
			}
			if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
				t.Fatalf("ADD result is not JSON: %v\n%s", err, r.Stdout)
			}
			if res.CNIVersion != v || len(res.IPs) != 1 || !strings.HasSuffix(res.IPs[0].Address, "/32") {
				t.Errorf("ADD with cniVersion %s answered %s", v, r.Stdout)
			}
			if v == "0.4.0" && res.IPs[0].Version != "4" {
				t.Errorf("a 0.4.0 result needs ips[].version 4: %s", r.Stdout)
			}
			env["CNI_COMMAND"] = "DEL"
			if r := runPlugin(t, ctx, lab, n, env, conf); r.ExitCode != 0 {
				t.Errorf("DEL with cniVersion %s: exit %d: %s", v, r.ExitCode, r.Stdout)
			}
			s, err := snapshot(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			if d := base.diff(s); d != "" {
				t.Errorf("ADD and DEL with cniVersion %s changed the node:\n%s", v, d)
			}
		})
	}
}
