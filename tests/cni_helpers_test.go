package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/netlab"
)

// nodeState is what pods may change on a node and must give back: its
// links, its routes in every table, its nftables rules and the daemon's
// allocations.
type nodeState struct {
	Links       []string
	Routes      []string
	Rules       map[string]int // "family table chain" -> rules
	Allocations int
}

// snapshot reads the state of n.
func snapshot(ctx context.Context, n *netlab.Node) (nodeState, error) {
	var s nodeState
	st, err := ipamStatus(ctx, n)
	if err != nil {
		return s, err
	}
	s.Allocations = st.Allocations
	h, err := netns.GetFromPath(n.Netns)
	if err != nil {
		return s, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return s, err
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		return s, fmt.Errorf("links of %s: %w", n.Name, err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
		s.Links = append(s.Links, l.Attrs().Name)
	}
	slices.Sort(s.Links)
	routes, err := nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return s, fmt.Errorf("routes of %s: %w", n.Name, err)
	}
	for _, r := range routes {
		s.Routes = append(s.Routes, fmt.Sprintf("table %d %s via %s dev %s scope %d proto %d", r.Table, r.Dst, r.Gw, names[r.LinkIndex], r.Scope, r.Protocol))
	}
	slices.Sort(s.Routes)
	nft, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return s, err
	}
	chains, err := nft.ListChains()
	if err != nil {
		return s, fmt.Errorf("nftables chains of %s: %w", n.Name, err)
	}
	s.Rules = map[string]int{}
	for _, c := range chains {
		rules, err := nft.GetRules(c.Table, c)
		if err != nil {
			return s, fmt.Errorf("nftables rules of %s: %w", n.Name, err)
		}
		s.Rules[fmt.Sprintf("%d %s %s", c.Table.Family, c.Table.Name, c.Name)] = len(rules)
	}
	return s, nil
}

// diff says how b differs from a, "" when it does not.
func (a nodeState) diff(b nodeState) string {
	var out []string
	listDiff := func(what string, x, y []string) {
		for _, v := range x {
			if !slices.Contains(y, v) {
				out = append(out, fmt.Sprintf("%s gone: %s", what, v))
			}
		}
		for _, v := range y {
			if !slices.Contains(x, v) {
				out = append(out, fmt.Sprintf("%s new: %s", what, v))
			}
		}
	}
	listDiff("link", a.Links, b.Links)
	listDiff("route", a.Routes, b.Routes)
	for k, v := range a.Rules {
		if b.Rules[k] != v {
			out = append(out, fmt.Sprintf("nftables chain %s: %d rules, then %d", k, v, b.Rules[k]))
		}
	}
	for k, v := range b.Rules {
		if _, ok := a.Rules[k]; !ok {
			out = append(out, fmt.Sprintf("nftables chain %s new with %d rules", k, v))
		}
	}
	if a.Allocations != b.Allocations {
		out = append(out, fmt.Sprintf("allocations: %d, then %d", a.Allocations, b.Allocations))
	}
	return strings.Join(out, "\n")
}

func (s nodeState) String() string {
	n := 0
	for _, v := range s.Rules {
		n += v
	}
	return fmt.Sprintf("%d links, %d routes, %d nftables rules, %d allocations", len(s.Links), len(s.Routes), n, s.Allocations)
}

// steadySnapshot waits until two snapshots in a row agree (the daemon has
// finished reconciling) and returns the last.
func steadySnapshot(t *testing.T, ctx context.Context, n *netlab.Node) nodeState {
	t.Helper()
	var last nodeState
	first := true
	poll(t, ctx, func() error {
		s, err := snapshot(ctx, n)
		if err != nil {
			return err
		}
		prev := last
		last = s
		if first {
			first = false
			return errors.New("first snapshot")
		}
		if d := prev.diff(s); d != "" {
			return fmt.Errorf("the node is still changing: %s", d)
		}
		return nil
	})
	return last
}

// pluginRun is the outcome of one run of the weft-cni binary.
type pluginRun struct {
	Stdout, Stderr string
	ExitCode       int
	Error          cniError // decoded from stdout when the run failed
}

type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details"`
}

// runPlugin runs the lab's weft-cni binary inside n, as a runtime would,
// with env (CNI_COMMAND, CNI_CONTAINERID, ...) and config on stdin.
func runPlugin(t *testing.T, ctx context.Context, lab *netlab.Lab, n *netlab.Node, env map[string]string, config []byte) pluginRun {
	t.Helper()
	cmd := n.Command(ctx, filepath.Join(lab.CNIBinDir(), "weft-cni"))
	cmd.Env = []string{"CNI_PATH=" + lab.CNIBinDir(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = bytes.NewReader(config)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	p, err := n.StartCmd(cmd)
	if err != nil {
		t.Fatalf("start weft-cni in %s: %v", n.Name, err)
	}
	err = p.Wait()
	r := pluginRun{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.ExitCode = ee.ExitCode()
		if jerr := json.Unmarshal(stdout.Bytes(), &r.Error); jerr != nil {
			t.Errorf("weft-cni failed (exit %d) without CNI error JSON on stdout: %v\nstdout: %s\nstderr: %s", r.ExitCode, jerr, r.Stdout, r.Stderr)
		}
	default:
		t.Fatalf("run weft-cni in %s: %v", n.Name, err)
	}
	return r
}

// pluginConf is a single-plugin weft-cni network config.
func pluginConf(version, socket string, extra map[string]any) []byte {
	c := map[string]any{"cniVersion": version, "name": "weft", "type": "weft-cni", "socket": socket}
	for k, v := range extra {
		c[k] = v
	}
	b, _ := json.Marshal(c)
	return b
}

// podLinks are the names of the links in a pod's netns.
func podLinks(t *testing.T, p *netlab.Pod) []string {
	t.Helper()
	h, err := netns.GetFromPath(p.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

// hasLink tells whether n has a link of that name.
func hasLink(t *testing.T, n *netlab.Node, name string) bool {
	t.Helper()
	h, err := netns.GetFromPath(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	_, err = nl.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}
