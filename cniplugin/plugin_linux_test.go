package cniplugin

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/cniplugin/cniplugintest"
)

func addOK(t *testing.T, n *node, list *libcni.NetworkConfigList, id string, pod ns.NetNS) *current.Result {
	t.Helper()
	res, err := n.add(list, id, pod)
	if err != nil {
		t.Fatalf("ADD %s: %v", id, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestAddPlumbsPod(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.0.0", "")
	// A node whose operator wants strict source validation host-wide:
	// the plugin leaves it so and makes its own interfaces loose.
	if err := n.ns.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/all/rp_filter", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, n.ns)
	podA, podB := newNetns(t), newNetns(t)

	r := addOK(t, n, list, "pod-a", podA)
	if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.32.0.1/32" || r.IPs[0].Gateway.String() != "169.254.1.1" {
		t.Fatalf("result IPs %v", r.IPs)
	}
	host := HostVethName("pod-a", "eth0")
	if len(r.Interfaces) != 2 || r.Interfaces[0].Name != host || r.Interfaces[1].Name != "eth0" || r.Interfaces[1].Sandbox != podA.Path() {
		t.Fatalf("result interfaces %v", r.Interfaces)
	}

	// The pod: its /32, the gateway on-link, the default route, the MTU.
	err := podA.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1420 || l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("eth0 MTU %d flags %v", l.Attrs().MTU, l.Attrs().Flags)
		}
		addrs, _ := netlinksafe.AddrList(l, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.32.0.1/32" {
			return fmt.Errorf("eth0 addresses %v", addrs)
		}
		routes, _ := netlinksafe.RouteList(l, netlink.FAMILY_V4)
		var got []string
		for _, r := range routes {
			got = append(got, fmt.Sprintf("%v via %v scope %v", r.Dst, r.Gw, r.Scope))
		}
		want := []string{"0.0.0.0/0 via 169.254.1.1 scope universe", "169.254.1.1/32 via <nil> scope link"}
		for _, w := range want {
			if !strings.Contains(strings.Join(got, "\n"), w) {
				return fmt.Errorf("pod routes %q lack %q", got, w)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The node: the host end, its route to the pod, proxy ARP.
	err = n.in(func() error {
		l, err := netlinksafe.LinkByName(host)
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1420 || l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("%s MTU %d flags %v", host, l.Attrs().MTU, l.Attrs().Flags)
		}
		routes, _ := netlinksafe.RouteList(l, netlink.FAMILY_V4)
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == "10.32.0.1/32" && r.Scope == netlink.SCOPE_LINK {
				return nil
			}
		}
		return fmt.Errorf("no host route to the pod: %v", routes)
	})
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"conf." + host + ".proxy_arp": "1", "conf." + host + ".forwarding": "1",
		"conf." + host + ".rp_filter": "2", "neigh." + host + ".proxy_delay": "0", "conf.all.rp_filter": "1"} {
		if v := sysctlIn(t, n.ns, "net.ipv4."+key); v != want {
			t.Errorf("net.ipv4.%s = %s, want %s", key, v, want)
		}
	}

	// Traffic: pod to node, pod to pod on the same node.
	rb := addOK(t, n, list, "pod-b", podB)
	if err := ping(t, podA, nodeAddr); err != nil {
		t.Error(err)
	}
	if err := ping(t, podA, rb.IPs[0].Address.IP.String()); err != nil {
		t.Error(err)
	}
	if err := ping(t, podB, r.IPs[0].Address.IP.String()); err != nil {
		t.Error(err)
	}

	// Proxy ARP alone answers for the gateway too.
	err = podA.Do(func(ns.NetNS) error {
		l, _ := netlinksafe.LinkByName("eth0")
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: net.ParseIP("169.254.1.1")})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(t, podA, nodeAddr); err != nil {
		t.Errorf("through proxy ARP: %v", err)
	}

	// ADD again: the same result.
	again := addOK(t, n, list, "pod-a", podA)
	if again.IPs[0].Address.String() != r.IPs[0].Address.String() || again.Interfaces[0].Mac != r.Interfaces[0].Mac || again.Interfaces[1].Mac != r.Interfaces[1].Mac {
		t.Errorf("second ADD gave %v %v, first %v %v", again.IPs, again.Interfaces, r.IPs, r.Interfaces)
	}
	if err := ping(t, podA, nodeAddr); err != nil {
		t.Errorf("after the second ADD: %v", err)
	}

	// DEL twice, both pods: the node is as before.
	for range 2 {
		for id, pod := range map[string]ns.NetNS{"pod-a": podA, "pod-b": podB} {
			if err := n.del(list, id, pod); err != nil {
				t.Fatalf("DEL %s: %v", id, err)
			}
		}
	}
	if got := snapshot(t, n.ns); got != before {
		t.Errorf("node after DEL:\n%s\nbefore:\n%s", got, before)
	}
	if a := n.daemon.Allocations(); len(a) != 0 {
		t.Errorf("allocations left: %v", a)
	}
}

func TestAddRepairs(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.0.0", "")
	pod := newNetns(t)
	r := addOK(t, n, list, "pod", pod)
	err := pod.Do(func(ns.NetNS) error {
		l, _ := netlinksafe.LinkByName("eth0")
		addrs, _ := netlinksafe.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if err := netlink.AddrDel(l, &a); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(t, pod, nodeAddr); err == nil {
		t.Fatal("ping works without the pod's address")
	}
	if again := addOK(t, n, list, "pod", pod); again.IPs[0].Address.String() != r.IPs[0].Address.String() {
		t.Errorf("ADD after damage gave %v, want %v", again.IPs, r.IPs)
	}
	if err := ping(t, pod, nodeAddr); err != nil {
		t.Errorf("ADD did not repair the pod: %v", err)
	}
}

// TestAddAfterDaemonLostAllocation: the daemon forgot the pod and hands
// out another address on the next ADD; the plugin moves the pod to it and
// leaves nothing of the old one.
func TestAddAfterDaemonLostAllocation(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.0.0", "")
	pod := newNetns(t)
	first := addOK(t, n, list, "pod", pod)
	n.daemon.Forget("pod", "eth0")
	second := addOK(t, n, list, "pod", pod)
	if first.IPs[0].Address.String() == second.IPs[0].Address.String() {
		t.Fatalf("the fake daemon gave the same address twice: %v", first.IPs)
	}
	if err := n.check(list, "pod", pod); err != nil {
		t.Errorf("CHECK after the move: %v", err)
	}
	host := HostVethName("pod", "eth0")
	err := n.in(func() error {
		l, err := netlinksafe.LinkByName(host)
		if err != nil {
			return err
		}
		routes, _ := netlinksafe.RouteList(l, netlink.FAMILY_V4)
		if len(routes) != 1 || routes[0].Dst.String() != second.IPs[0].Address.String() {
			return fmt.Errorf("host routes via %s: %v", host, routes)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if err := ping(t, pod, nodeAddr); err != nil {
		t.Error(err)
	}
}

func TestResultVersionsThroughLibcni(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			list := n.conflist(t, v, "")
			pod := newNetns(t)
			res, err := n.add(list, "pod-"+v, pod)
			if err != nil {
				t.Fatal(err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			if err := n.check(list, "pod-"+v, pod); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := n.del(list, "pod-"+v, pod); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.0.0", "")
	pod := newNetns(t)
	addOK(t, n, list, "pod", pod)
	if err := n.check(list, "pod", pod); err != nil {
		t.Fatalf("CHECK of a fresh pod: %v", err)
	}
	err := pod.Do(func(ns.NetNS) error {
		l, _ := netlinksafe.LinkByName("eth0")
		_, dst, _ := net.ParseCIDR("0.0.0.0/0")
		return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: net.ParseIP("169.254.1.1")})
	})
	if err != nil {
		t.Fatal(err)
	}
	err = n.check(list, "pod", pod)
	if err == nil {
		t.Fatal("CHECK passes without the pod's default route")
	}
	if e := cniError(t, err); e.Code != ErrCheckMismatch || !strings.Contains(e.Msg, "default route via 169.254.1.1") {
		t.Errorf("CHECK error %d %q", e.Code, e.Msg)
	}
	if err := n.in(func() error { return deleteLink(HostVethName("pod", "eth0")) }); err != nil {
		t.Fatal(err)
	}
	err = n.check(list, "pod", pod)
	if e := cniError(t, err); !strings.Contains(e.Msg, "is missing") {
		t.Errorf("CHECK after the veth is gone: %q", e.Msg)
	}
	n.daemon.Forget("pod", "eth0")
	if e := cniError(t, n.check(list, "pod", pod)); e.Code != types.ErrUnknownContainer {
		t.Errorf("CHECK of an attachment the daemon does not know: code %d %q", e.Code, e.Msg)
	}
}

func TestDelWhenThingsAreGone(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(n *node, pod ns.NetNS)
	}{
		{"netns gone", func(n *node, pod ns.NetNS) {
			pod.Close()
			if err := testutils.UnmountNS(pod); err != nil {
				t.Fatal(err)
			}
		}},
		{"daemon stopped", func(n *node, _ ns.NetNS) { n.daemon.Close() }},
		{"daemon lost the allocation", func(n *node, _ ns.NetNS) { n.daemon.Forget("pod", "eth0") }},
		{"daemon fails", func(n *node, _ ns.NetNS) {
			n.daemon.Fail(api.PathCNIRelease, &api.Error{Status: 500, Code: api.CodeInternal, Message: "disk full"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, cniplugintest.Config{})
			list := n.conflist(t, "1.0.0", "")
			before := snapshot(t, n.ns)
			pod := newNetns(t)
			addOK(t, n, list, "pod", pod)
			tt.breakIt(n, pod)
			for range 2 {
				if err := n.del(list, "pod", pod); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			}
			if got := snapshot(t, n.ns); got != before {
				t.Errorf("node after DEL:\n%s\nbefore:\n%s", got, before)
			}
		})
	}
}

func TestFailedAddLeavesNothing(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.0.0", "")
	before := snapshot(t, n.ns)
	pod := newNetns(t)
	// An eth0 that is not weft's is in the way.
	err := pod.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other"})
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.add(list, "pod", pod)
	if err == nil {
		t.Fatal("ADD over a foreign eth0 succeeded")
	}
	if e := cniError(t, err); !strings.Contains(e.Msg, "already exists") {
		t.Errorf("error %q", e.Msg)
	}
	if got := snapshot(t, n.ns); got != before {
		t.Errorf("node after the failed ADD:\n%s\nbefore:\n%s", got, before)
	}
	if a := n.daemon.Allocations(); len(a) != 0 {
		t.Errorf("allocation left after the failed ADD: %v", a)
	}
}

func TestErrors(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	pod := newNetns(t)
	good := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","socket":%q}`, n.daemon.Socket())
	env := func(cmd string) map[string]string {
		return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "pod", "CNI_NETNS": pod.Path(), "CNI_IFNAME": "eth0"}
	}
	tests := []struct {
		name  string
		env   map[string]string
		stdin string
		setup func()
		code  uint
		msg   string
	}{
		{name: "malformed JSON", env: env("ADD"), stdin: `{"cniVersion":"1.0.0","name":`, code: types.ErrDecodingFailure, msg: "unmarshal"},
		{name: "wrong cniVersion", env: env("ADD"), stdin: strings.Replace(good, "1.0.0", "0.2.0", 1), code: types.ErrIncompatibleCNIVersion, msg: "incompatible"},
		{name: "future cniVersion", env: env("ADD"), stdin: strings.Replace(good, "1.0.0", "7.0.0", 1), code: types.ErrIncompatibleCNIVersion, msg: "incompatible"},
		{name: "bad mtu", env: env("ADD"), stdin: strings.Replace(good, `"type"`, `"mtu":"big","type"`, 1), code: types.ErrInvalidNetworkConfig, msg: "mtu must be a whole number"},
		{name: "missing socket", env: env("ADD"), stdin: strings.Replace(good, n.daemon.Socket(), "/nonexistent/weft.sock", 1), code: types.ErrTryAgainLater,
			msg: "the weft daemon is not running on this node (nothing listens on /nonexistent/weft.sock)"},
		{name: "unknown command", env: env("FROB"), stdin: good, code: types.ErrInvalidEnvironmentVariables, msg: "unknown CNI_COMMAND"},
		{name: "netns does not exist", env: func() map[string]string { e := env("ADD"); e["CNI_NETNS"] = "/run/netns/nope"; return e }(), stdin: good,
			code: types.ErrInvalidEnvironmentVariables, msg: `CNI_NETNS "/run/netns/nope" does not exist`},
		{name: "netns of the node", env: func() map[string]string { e := env("ADD"); e["CNI_NETNS"] = n.ns.Path(); return e }(), stdin: good,
			code: types.ErrInvalidEnvironmentVariables, msg: "node's own network namespace"},
		{name: "range full", env: env("ADD"), stdin: good, setup: func() {
			n.daemon.Fail(api.PathCNIAllocate, &api.Error{Status: 503, Code: api.CodeFull, Message: "no free address in 10.32.0.0/12", Hint: "delete pods"})
		}, code: types.ErrTryAgainLater, msg: "no free address in 10.32.0.0/12"},
		{name: "daemon not ready", env: env("ADD"), stdin: good, setup: func() {
			n.daemon.Fail(api.PathCNIAllocate, &api.Error{Status: 503, Code: api.CodeNotReady, Message: "not in the mesh yet"})
		}, code: types.ErrTryAgainLater, msg: "not in the mesh yet"},
		{name: "prevResult in ADD", env: env("ADD"), stdin: strings.Replace(good, `"type"`, `"prevResult":{"cniVersion":"1.0.0"},"type"`, 1),
			code: types.ErrUnsupportedField, msg: "first"},
		{name: "GC without valid attachments", env: map[string]string{"CNI_COMMAND": "GC"}, stdin: strings.Replace(good, "1.0.0", "1.1.0", 1),
			code: types.ErrInvalidNetworkConfig, msg: "valid-attachments"},
		{name: "CHECK unknown container", env: env("CHECK"), stdin: good, code: types.ErrUnknownContainer, msg: "no allocation"},
	}
	before := snapshot(t, n.ns)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
				t.Cleanup(func() {
					n.daemon.Fail(api.PathCNIAllocate, nil)
				})
			}
			out, err := n.exec(tt.env, tt.stdin)
			if err == nil {
				t.Fatalf("plugin exited 0: %s", out)
			}
			e := parseCNIError(t, out)
			if e.Code != tt.code || !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("code %d %q, want code %d containing %q", e.Code, e.Msg, tt.code, tt.msg)
			}
			if got := snapshot(t, n.ns); got != before {
				t.Errorf("node changed:\n%s\nbefore:\n%s", got, before)
			}
			if a := n.daemon.Allocations(); len(a) != 0 {
				t.Errorf("allocations left: %v", a)
			}
		})
	}
}

func TestGC(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.1.0", "")
	before := snapshot(t, n.ns)
	pods := map[string]ns.NetNS{}
	for _, id := range []string{"keep", "gone-1", "gone-2"} {
		pods[id] = newNetns(t)
		addOK(t, n, list, id, pods[id])
	}
	// A weft veth nobody knows about, left behind by a crash.
	err := n.in(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostVethName("stray", "eth0")}, PeerName: "strayPeer"})
	})
	if err != nil {
		t.Fatal(err)
	}
	// A fresh cache: libcni would otherwise send DEL for the cached
	// attachments that are not valid before GC, and GC itself would have
	// nothing left to do.
	gcCNI := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(), newExec())
	err = n.in(func() error {
		return gcCNI.GCNetworkList(context.Background(), list, &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}},
		})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if links := n.weftLinks(t); len(links) != 1 || links[0] != HostVethName("keep", "eth0") {
		t.Errorf("weft links after GC: %v", links)
	}
	if a := n.daemon.Allocations(); len(a) != 1 || a[0].ContainerID != "keep" {
		t.Errorf("allocations after GC: %v", a)
	}
	if err := ping(t, pods["keep"], nodeAddr); err != nil {
		t.Errorf("the valid pod lost its network: %v", err)
	}
	if err := n.del(list, "keep", pods["keep"]); err != nil {
		t.Fatal(err)
	}
	if got := snapshot(t, n.ns); got != before {
		t.Errorf("node after GC and DEL:\n%s\nbefore:\n%s", got, before)
	}
}

func TestStatus(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.1.0", "")
	status := func() error {
		return n.in(func() error { return n.cni.GetStatusNetworkList(context.Background(), list) })
	}
	if err := status(); err != nil {
		t.Fatalf("STATUS of a ready daemon: %v", err)
	}
	n.daemon.SetReady(false, "no address space yet")
	if e := cniError(t, status()); e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, "no address space yet") {
		t.Errorf("STATUS of a daemon not ready: %d %q", e.Code, e.Msg)
	}
	n.daemon.Close()
	if e := cniError(t, status()); e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, "not running on this node") {
		t.Errorf("STATUS without a daemon: %d %q", e.Code, e.Msg)
	}
}

func TestConcurrentAdds(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.0.0", "")
	before := snapshot(t, n.ns)
	const pods = 50
	netns := make([]ns.NetNS, pods)
	for i := range netns {
		netns[i] = newNetns(t)
	}
	addrs := make([]string, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() {
			res, err := n.add(list, fmt.Sprintf("pod-%d", i), netns[i])
			if err != nil {
				errs[i] = err
				return
			}
			r, err := current.NewResultFromResult(res)
			if err != nil {
				errs[i] = err
				return
			}
			addrs[i] = r.IPs[0].Address.IP.String()
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD pod-%d: %v", i, err)
		}
		if seen[addrs[i]] {
			t.Fatalf("address %s given twice", addrs[i])
		}
		seen[addrs[i]] = true
	}
	for i := range pods {
		if err := ping(t, netns[i], addrs[(i+1)%pods]); err != nil {
			t.Errorf("pod-%d: %v", i, err)
		}
	}
	for i := range pods {
		wg.Go(func() { errs[i] = n.del(list, fmt.Sprintf("pod-%d", i), netns[i]) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL pod-%d: %v", i, err)
		}
	}
	if got := snapshot(t, n.ns); got != before {
		t.Errorf("node after DEL:\n%s\nbefore:\n%s", got, before)
	}
}

func TestAddDelCycles(t *testing.T) {
	cycles := 200
	if testing.Short() {
		cycles = 20
	}
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.0.0", "")
	pod := newNetns(t)
	before, podBefore := snapshot(t, n.ns), snapshot(t, pod)
	for i := range cycles {
		id := fmt.Sprintf("cycle-%d", i)
		if _, err := n.add(list, id, pod); err != nil {
			t.Fatalf("cycle %d ADD: %v", i, err)
		}
		if err := n.del(list, id, pod); err != nil {
			t.Fatalf("cycle %d DEL: %v", i, err)
		}
	}
	if got := snapshot(t, n.ns); got != before {
		t.Errorf("node after %d cycles:\n%s\nbefore:\n%s", cycles, got, before)
	}
	if got := snapshot(t, pod); got != podBefore {
		t.Errorf("pod netns after %d cycles:\n%s\nbefore:\n%s", cycles, got, podBefore)
	}
	if a := n.daemon.Allocations(); len(a) != 0 {
		t.Errorf("allocations left: %v", a)
	}
}

// TestGCDaemonDown: the stale links go all the same, and the runtime hears
// to try again for the addresses.
func TestGCDaemonDown(t *testing.T) {
	n := newNode(t, cniplugintest.Config{})
	list := n.conflist(t, "1.1.0", "")
	pod := newNetns(t)
	addOK(t, n, list, "gone", pod)
	n.daemon.Close()
	gcCNI := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(), newExec())
	err := n.in(func() error {
		return gcCNI.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}})
	})
	if e := cniError(t, err); e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "not running") {
		t.Errorf("GC without a daemon: %d %q", e.Code, e.Msg)
	}
	if links := n.weftLinks(t); len(links) != 0 {
		t.Errorf("weft links after GC: %v", links)
	}
}
