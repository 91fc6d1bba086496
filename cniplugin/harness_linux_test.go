package cniplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/cniplugin/cniplugintest"
)

// pluginDir holds the plugin binary (weft-cni) the root tests run through
// libcni; empty when not root.
var pluginDir string

// nodeAddr is the node's own address in the test node netns, on its
// loopback; pods ping it.
const nodeAddr = "10.99.0.1"

// TestMain builds the real weft binary as weft-cni. When that build fails
// (another package of the module may be broken at the moment), the test
// binary itself stands in: started as weft-cni it runs Main.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == BinaryName {
		Main()
		return
	}
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "weft-cni-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if err := buildPlugin(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		pluginDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

func buildPlugin(dir string) error {
	dst := filepath.Join(dir, BinaryName)
	if os.Getenv("WEFT_CNI_TEST_SELF") == "" {
		cmd := exec.Command("go", "build", "-o", dst, "github.com/weftnet/weft")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err == nil {
			return nil
		}
		fmt.Fprintf(os.Stderr, "cniplugin tests: cannot build weft (%v), running the plugin from the test binary:\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	in, err := os.Open(self)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 || pluginDir == "" {
		t.Skip("needs root: creates network namespaces, veths and routes")
	}
}

// node is a throwaway "node" netns with a fake weft daemon, where the
// plugin runs as a runtime would run it.
type node struct {
	ns     ns.NetNS
	daemon *cniplugintest.Daemon
	cni    *libcni.CNIConfig
	cache  string
}

func newNode(t testing.TB, dcfg cniplugintest.Config) *node {
	t.Helper()
	needRoot(t)
	n := &node{ns: newNetns(t), cache: t.TempDir()}
	underlay := newNetns(t)
	d, err := cniplugintest.Start(dcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	n.daemon = d
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir, "/usr/lib/cni"}, n.cache, newExec())
	err = n.ns.Do(func(ns.NetNS) error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(nodeAddr), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return err
		}
		// An uplink with a default route, as every node has, so that proxy
		// ARP answers for the gateway. Its peer sits in a netns of its own
		// where whatever goes there ends.
		uplink := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink"}, PeerName: "uplink",
			PeerNamespace: netlink.NsFd(int(underlay.Fd()))}
		if err := netlink.LinkAdd(uplink); err != nil {
			return fmt.Errorf("add uplink: %w", err)
		}
		if err := netlink.LinkSetUp(uplink); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: uplink.Attrs().Index, Scope: netlink.SCOPE_LINK,
			Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}})
	})
	if err != nil {
		t.Fatalf("set up node netns: %v", err)
	}
	return n
}

// newExec is libcni's default exec, made up front: libcni makes it lazily
// on first use, which races when goroutines share one CNIConfig.
func newExec() invoke.Exec {
	return &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
}

// newNetns makes a named (bind-mounted) netns, removed at cleanup.
func newNetns(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		testutils.UnmountNS(n)
	})
	return n
}

// conflist is the network config list of the tests: weft-cni alone.
func (n *node) conflist(t testing.TB, cniVersion string, extra string) *libcni.NetworkConfigList {
	t.Helper()
	s := fmt.Sprintf(`{"cniVersion":%q,"name":"weft","plugins":[{"type":"weft-cni","socket":%q%s}]}`, cniVersion, n.daemon.Socket(), extra)
	l, err := libcni.ConfListFromBytes([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func runtimeConf(id string, pod ns.NetNS) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: id, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}}}
	if pod != nil {
		rt.NetNS = pod.Path()
	}
	return rt
}

// in runs f in the node's netns: the plugin processes libcni starts from
// there inherit it.
func (n *node) in(f func() error) error {
	return n.ns.Do(func(ns.NetNS) error { return f() })
}

func (n *node) add(list *libcni.NetworkConfigList, id string, pod ns.NetNS) (types.Result, error) {
	var res types.Result
	err := n.in(func() (err error) {
		res, err = n.cni.AddNetworkList(context.Background(), list, runtimeConf(id, pod))
		return err
	})
	return res, err
}

func (n *node) del(list *libcni.NetworkConfigList, id string, pod ns.NetNS) error {
	return n.in(func() error { return n.cni.DelNetworkList(context.Background(), list, runtimeConf(id, pod)) })
}

func (n *node) check(list *libcni.NetworkConfigList, id string, pod ns.NetNS) error {
	return n.in(func() error { return n.cni.CheckNetworkList(context.Background(), list, runtimeConf(id, pod)) })
}

// exec runs the plugin binary in the node's netns with env and stdin, as
// a runtime does, and returns its stdout and exit error.
func (n *node) exec(env map[string]string, stdin string) (stdout []byte, err error) {
	cmd := exec.Command(filepath.Join(pluginDir, BinaryName))
	cmd.Env = []string{"CNI_PATH=" + pluginDir}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = n.in(cmd.Run)
	return out.Bytes(), err
}

// snapshot describes the links and routes (all tables) of a netns, to
// compare before and after.
func snapshot(t testing.TB, netns ns.NetNS) string {
	t.Helper()
	var lines []string
	err := netns.Do(func(ns.NetNS) error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			lines = append(lines, "link "+l.Type()+" "+l.Attrs().Name)
		}
		routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range routes {
			lines = append(lines, fmt.Sprintf("route table %d dst %v gw %v link %d", r.Table, r.Dst, r.Gw, r.LinkIndex))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// weftLinks lists the host veths weft made in the node's netns.
func (n *node) weftLinks(t testing.TB) []string {
	t.Helper()
	var names []string
	if err := n.in(func() (err error) { names, err = hostVeths(); return err }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// ping sends one echo request from the pod to dst with the ping tool.
func ping(t testing.TB, pod ns.NetNS, dst string) error {
	t.Helper()
	var out []byte
	err := pod.Do(func(ns.NetNS) (err error) {
		out, err = exec.Command("ping", "-c", "1", "-W", "2", "-q", dst).CombinedOutput()
		return err
	})
	if err != nil {
		return fmt.Errorf("ping %s: %v: %s", dst, err, out)
	}
	return nil
}

// cniError digs the CNI error out of what libcni returned.
func cniError(t testing.TB, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not a CNI error", err)
	}
	return e
}

// parseCNIError decodes the error JSON the plugin printed.
func parseCNIError(t testing.TB, stdout []byte) *types.Error {
	t.Helper()
	var e types.Error
	if err := json.Unmarshal(stdout, &e); err != nil || e.Msg == "" {
		t.Fatalf("stdout is not CNI error JSON (%v): %s", err, stdout)
	}
	return &e
}

func sysctlIn(t testing.TB, netns ns.NetNS, name string) string {
	t.Helper()
	var v []byte
	err := netns.Do(func(ns.NetNS) (err error) {
		v, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}
