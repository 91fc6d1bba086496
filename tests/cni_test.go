package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/cniplugin"
	"github.com/weftnet/weft/netlab"
)

// 50 ADDs at once on one node through libcni: 50 distinct addresses, each
// pod reaching another node over the tunnel.
func TestCNIConcurrentAdds(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, tunnel := meshOf(t, ctx, lab, 2)
	const count = 50
	pods := make([]*netlab.Pod, count)
	errs := make([]error, count)
	took := make([]time.Duration, count)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			t0 := time.Now()
			pods[i], errs[i] = nodes[0].AddPod(ctx, netlab.PodConfig{Name: fmt.Sprintf("c%d", i)})
			took[i] = time.Since(t0)
		})
	}
	wg.Wait()
	all := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent ADDs: %v", err)
	}
	slices.Sort(took)
	t.Logf("%d concurrent ADDs in %v; each took p50 %v, max %v", count, all.Round(time.Millisecond),
		took[count/2].Round(time.Millisecond), took[count-1].Round(time.Millisecond))

	seen := map[netip.Addr]string{}
	for _, p := range pods {
		ip := p.IP()
		if !podCIDR.Contains(ip) {
			t.Errorf("pod %s got %s, outside the pod range", p.Name, ip)
		}
		if other, dup := seen[ip]; dup {
			t.Errorf("pods %s and %s both got %s", other, p.Name, ip)
		}
		seen[ip] = p.Name
	}
	target := tunnel[nodes[1].Name]
	for _, p := range pods {
		poll(t, ctx, func() error {
			if _, err := p.Ping(ctx, target); err != nil {
				return fmt.Errorf("pod %s (%s) -> %s's tunnel address %s: %w", p.Name, p.IP(), nodes[1].Name, target, err)
			}
			return nil
		})
	}
	t.Logf("all %d pods reach %s at %s", count, nodes[1].Name, target)
}

// 500 ADD/DEL cycles through libcni leave the node as it was: links,
// routes of every table, nftables rules and allocations.
func TestCNIAddDelCycles(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 1)
	n := nodes[0]
	// A first pod makes what the first pod makes once for all (chains,
	// sysctls); the node must come back to this.
	warm, err := n.AddPod(ctx, netlab.PodConfig{Name: "warm"})
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	before := steadySnapshot(t, ctx, n)
	t.Logf("before: %s", before)

	const cycles, workers = 500, 4
	var next atomic.Int64
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= cycles || ctx.Err() != nil {
					return
				}
				p, err := n.AddPod(ctx, netlab.PodConfig{Name: fmt.Sprintf("cyc%d-%d", w, i)})
				if err == nil {
					err = p.Delete(ctx)
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("cycle %d: %w", i, err))
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d ADD/DEL cycles, %d at a time, in %v (%v per cycle)", cycles, workers, took.Round(time.Millisecond), (took / cycles).Round(time.Microsecond))

	after, err := snapshot(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after: %s", after)
	if d := before.diff(after); d != "" {
		t.Errorf("the node changed after %d ADD/DEL cycles:\n%s", cycles, d)
	}
}

// Wrong calls of the plugin binary each give CNI error JSON with a clear
// message and a non-zero exit, and leave nothing behind; so does ADD when
// the pod range is full.
func TestCNIErrors(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tiny := netip.MustParsePrefix("10.32.0.0/28")
	nodes, _ := meshOf(t, ctx, lab, 1, "--pod-cidr", tiny.String())
	n := nodes[0]
	// A pod whose netns the calls name; they use another container ID and
	// eth1, so what they would make is new.
	anchor, err := n.AddPod(ctx, netlab.PodConfig{Name: "anchor"})
	if err != nil {
		t.Fatal(err)
	}
	anchorLinks := podLinks(t, anchor)
	good := pluginConf("1.0.0", n.SocketPath(), nil)
	env := func(cmd string) map[string]string {
		return map[string]string{
			"CNI_COMMAND":     cmd,
			"CNI_CONTAINERID": "errors0123456789",
			"CNI_NETNS":       anchor.Netns,
			"CNI_IFNAME":      "eth1",
			"CNI_ARGS":        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=errors",
		}
	}
	with := func(m map[string]string, k, v string) map[string]string { m[k] = v; return m }

	cases := []struct {
		name   string
		env    map[string]string
		config []byte
		code   uint
		says   []string
	}{
		{"malformed JSON", env("ADD"), []byte(`{"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni",`), types.ErrDecodingFailure, nil},
		{"wrong cniVersion", env("ADD"), pluginConf("9.9.9", n.SocketPath(), nil), types.ErrIncompatibleCNIVersion, []string{"9.9.9"}},
		{"missing socket", env("ADD"), pluginConf("1.0.0", "/run/weft-no-such-dir/weft.sock", nil), types.ErrTryAgainLater,
			[]string{"/run/weft-no-such-dir/weft.sock", "not running"}},
		{"unknown CNI_COMMAND", env("FROBNICATE"), good, types.ErrInvalidEnvironmentVariables, []string{"FROBNICATE"}},
		{"netns that does not exist", with(env("ADD"), "CNI_NETNS", "/run/netns/weft-no-such-netns"), good,
			types.ErrInvalidEnvironmentVariables, []string{"/run/netns/weft-no-such-netns", "does not exist"}},
	}
	base := steadySnapshot(t, ctx, n)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runPlugin(t, ctx, lab, n, c.env, c.config)
			checkCNIError(t, r, c.code, c.says...)
			after, err := snapshot(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			if d := base.diff(after); d != "" {
				t.Errorf("the failed call changed the node:\n%s", d)
			}
			if got := podLinks(t, anchor); !slices.Equal(got, anchorLinks) {
				t.Errorf("the failed call changed the pod's links: %v -> %v", anchorLinks, got)
			}
		})
	}

	t.Run("missing socket through libcni", func(t *testing.T) {
		var list map[string]any
		if err := json.Unmarshal(n.NetConfList(), &list); err != nil {
			t.Fatal(err)
		}
		plugins := list["plugins"].([]any)
		plugins[0].(map[string]any)["socket"] = "/run/weft-no-such-dir/weft.sock"
		conf, _ := json.Marshal(list)
		_, err := n.AddPod(ctx, netlab.PodConfig{Name: "no-daemon", NetConfList: conf})
		var ce *types.Error
		if !errors.As(err, &ce) || ce.Code != types.ErrTryAgainLater || !strings.Contains(ce.Msg, "/run/weft-no-such-dir/weft.sock") || !strings.Contains(ce.Msg, "not running") {
			t.Errorf("ADD through a conflist naming a missing socket: %v; want code 11 naming the socket and saying the daemon is not running", err)
		}
		after, err := snapshot(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if d := base.diff(after); d != "" {
			t.Errorf("the failed ADD changed the node:\n%s", d)
		}
	})

	t.Run("full range", func(t *testing.T) {
		filled := 0
		for ; ; filled++ {
			_, err := allocate(ctx, n, fmt.Sprintf("fill-%d", filled))
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code == api.CodeFull {
				break
			}
			if err != nil {
				t.Fatalf("fill the range: %v", err)
			}
			if filled > 20 {
				t.Fatalf("%s holds more than 20 addresses", tiny)
			}
		}
		t.Logf("%s full after %d more allocations", tiny, filled)
		full := steadySnapshot(t, ctx, n)
		want := fmt.Sprintf("pod range %s is full", tiny)
		r := runPlugin(t, ctx, lab, n, env("ADD"), good)
		checkCNIError(t, r, types.ErrTryAgainLater, want)
		// And through libcni, as a runtime would see it.
		_, err := n.AddPod(ctx, netlab.PodConfig{Name: "one-too-many"})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ADD through libcni with the range full: %v; want an error saying %q", err, want)
		}
		after, err := snapshot(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if d := full.diff(after); d != "" {
			t.Errorf("the failed ADDs changed the node:\n%s", d)
		}
		if got := podLinks(t, anchor); !slices.Equal(got, anchorLinks) {
			t.Errorf("the failed ADD changed the pod's links: %v -> %v", anchorLinks, got)
		}
	})
}

// checkCNIError checks that r failed with a non-zero exit and CNI error
// JSON of that code whose message says every one of says.
func checkCNIError(t *testing.T, r pluginRun, code uint, says ...string) {
	t.Helper()
	if r.ExitCode == 0 {
		t.Fatalf("weft-cni succeeded; stdout: %s", r.Stdout)
	}
	e := r.Error
	t.Logf("exit %d: code %d: %s (%s)", r.ExitCode, e.Code, e.Msg, e.Details)
	if e.Code != code {
		t.Errorf("CNI error code %d, want %d: %s", e.Code, code, r.Stdout)
	}
	if e.Msg == "" {
		t.Errorf("CNI error JSON without a message: %s", r.Stdout)
	}
	text := e.Msg + " " + e.Details
	for _, s := range says {
		if !strings.Contains(text, s) {
			t.Errorf("the error does not say %q: %s", s, text)
		}
	}
}

// The daemon killed between ADD and DEL: DEL succeeds and removes the link,
// and the daemon, back, frees the address of the pod that is gone (and
// only that: a pod that is still there keeps its address).
func TestCNIDaemonKilledBetweenAddAndDel(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 1)
	n := nodes[0]
	live, err := n.AddPod(ctx, netlab.PodConfig{Name: "live"})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := n.AddPod(ctx, netlab.PodConfig{Name: "orphan"})
	if err != nil {
		t.Fatal(err)
	}
	added := time.Now()
	veth := cniplugin.HostVethName(pod.ContainerID, pod.IfName)
	if !hasLink(t, n, veth) {
		t.Fatalf("no host veth %s after ADD", veth)
	}
	if err := n.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := pod.Delete(ctx); err != nil {
		t.Fatalf("DEL with the daemon down: %v", err)
	}
	if hasLink(t, n, veth) {
		t.Errorf("DEL with the daemon down left the host veth %s", veth)
	}
	if err := n.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	sweepCtx, cancelSweep := context.WithTimeout(ctx, 60*time.Second)
	defer cancelSweep()
	att := api.Attachment{ContainerID: pod.ContainerID, IfName: pod.IfName}
	poll(t, sweepCtx, func() error {
		var al api.Allocation
		err := daemonAPI(n).Do(ctx, http.MethodPost, api.PathCNICheck, att, &al)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == api.CodeUnknown {
			return nil
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("the daemon still holds %s for the deleted pod", al.Address)
	})
	t.Logf("address of the deleted pod freed %v after the daemon came back (%v after ADD)",
		time.Since(back).Round(time.Millisecond), time.Since(added).Round(time.Millisecond))
	st, err := ipamStatus(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if st.Allocations != 3 {
		t.Errorf("the daemon holds %d allocations, want 3 (its tunnel and probe addresses and the live pod)", st.Allocations)
	}
	// The sweep left the pod that is still there alone.
	if err := live.Check(ctx); err != nil {
		t.Errorf("CHECK of the live pod after the sweep freed the other: %v", err)
	}
}

// CHECK of a healthy pod passes; STATUS says ready while the daemon is up
// and fails with code 50 while it is stopped; GC with valid attachments
// releases every other allocation and link.
func TestCNICheckStatusGC(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 1)
	n := nodes[0]
	pods := addPods(t, ctx, nodes, 3)
	for _, p := range pods {
		if err := p.Check(ctx); err != nil {
			t.Errorf("CHECK of the healthy pod %s: %v", p.Name, err)
		}
	}

	var conflist struct {
		CNIVersions []string `json:"cniVersions"`
	}
	if err := json.Unmarshal(n.NetConfList(), &conflist); err != nil {
		t.Fatal(err)
	}
	list := pods[0].NetConfList()
	viaLibcni := slices.Contains(conflist.CNIVersions, "1.1.0") && list.CNIVersion == "1.1.0"
	t.Logf("the node's conflist offers %v; STATUS through libcni: %v", conflist.CNIVersions, viaLibcni)
	status := func() pluginRun {
		return runPlugin(t, ctx, lab, n, map[string]string{"CNI_COMMAND": "STATUS"}, pluginConf("1.1.0", n.SocketPath(), nil))
	}
	if r := status(); r.ExitCode != 0 {
		t.Errorf("STATUS with the daemon up: exit %d: %s", r.ExitCode, r.Stdout)
	}
	if viaLibcni {
		if err := n.CNIConfig().GetStatusNetworkList(ctx, list); err != nil {
			t.Errorf("STATUS through libcni with the daemon up: %v", err)
		}
	}

	if err := n.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	r := status()
	checkCNIError(t, r, types.ErrPluginNotAvailable, n.SocketPath(), "not running")
	if viaLibcni {
		err := n.CNIConfig().GetStatusNetworkList(ctx, list)
		var ce *types.Error
		if !errors.As(err, &ce) || ce.Code != types.ErrPluginNotAvailable {
			t.Errorf("STATUS through libcni with the daemon stopped: %v; want code 50", err)
		}
	}
	if err := n.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	poll(t, ctx, func() error {
		if r := status(); r.ExitCode != 0 {
			return fmt.Errorf("STATUS after the restart: %s", r.Error.Msg)
		}
		return nil
	})

	keep, drop := pods[:2], pods[2]
	valid := []map[string]string{}
	for _, p := range keep {
		valid = append(valid, map[string]string{"containerID": p.ContainerID, "ifname": p.IfName})
	}
	gcConf := pluginConf("1.1.0", n.SocketPath(), map[string]any{"cni.dev/valid-attachments": valid})
	if r := runPlugin(t, ctx, lab, n, map[string]string{"CNI_COMMAND": "GC"}, gcConf); r.ExitCode != 0 {
		t.Fatalf("GC: exit %d: %s %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	check := func(p *netlab.Pod) error {
		return daemonAPI(n).Do(ctx, http.MethodPost, api.PathCNICheck, api.Attachment{ContainerID: p.ContainerID, IfName: p.IfName}, nil)
	}
	var ae *api.Error
	if err := check(drop); !errors.As(err, &ae) || ae.Code != api.CodeUnknown {
		t.Errorf("after GC the daemon still knows the pod %s that was not listed: %v", drop.Name, err)
	}
	if hasLink(t, n, cniplugin.HostVethName(drop.ContainerID, drop.IfName)) {
		t.Errorf("after GC the host veth of %s is still there", drop.Name)
	}
	for _, p := range keep {
		if err := check(p); err != nil {
			t.Errorf("GC released the listed pod %s: %v", p.Name, err)
		}
		if err := p.Check(ctx); err != nil {
			t.Errorf("CHECK of the listed pod %s after GC: %v", p.Name, err)
		}
	}
	st, err := ipamStatus(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(keep) + 2; st.Allocations != want { // and the node's tunnel and probe addresses
		t.Errorf("after GC the daemon holds %d allocations, want %d", st.Allocations, want)
	}
}
