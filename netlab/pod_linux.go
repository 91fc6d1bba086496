package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/cniplugin/install"
)

// NetConfList is the node's default CNI configuration: exactly what
// `weft install-cni` writes for this node (weft's plugin with the node's
// daemon socket, chained with portmap, and the CNI versions every plugin of
// the chain supports).
func (n *Node) NetConfList() []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conflist == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		data, err := install.Conflist(ctx, install.Config{BinDir: n.lab.cniBinDir, Socket: n.SocketPath()})
		if err != nil {
			// AddPod reports the broken config when libcni parses it.
			return []byte(err.Error())
		}
		n.conflist = data
	}
	return n.conflist
}

// CNIExec runs CNI plugins inside the node (its netns and its own /run),
// as the container runtime of that node would.
func (n *Node) CNIExec() invoke.Exec { return &nodeExec{node: n} }

// CNIConfig is a libcni client that finds the plugins in the lab's CNI bin
// dir, keeps its cache in the node's directory and runs the plugins inside
// the node; use it for CHECK, GC and STATUS.
func (n *Node) CNIConfig() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{n.lab.cniBinDir}, n.cniCacheDir(), n.CNIExec())
}

type nodeExec struct {
	node *Node
	version.PluginDecoder
}

func (e *nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 2 * time.Second
	if err := start(cmd, e.node.place()); err != nil {
		return nil, fmt.Errorf("start CNI plugin %s in %s: %w", pluginPath, e.node.Name, err)
	}
	if err := cmd.Wait(); err != nil {
		return nil, pluginError(err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

func (e *nodeExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// pluginError is the CNI error a failed plugin printed, or one made from
// its stderr.
func pluginError(err error, stdout, stderr []byte) error {
	e := &types.Error{}
	switch {
	case len(stdout) > 0 && json.Unmarshal(stdout, e) == nil && e.Msg != "":
		if len(stderr) > 0 && e.Details == "" {
			e.Details = string(bytes.TrimSpace(stderr))
		}
	case len(stderr) > 0:
		e.Msg = fmt.Sprintf("plugin failed: %s: %v", bytes.TrimSpace(stderr), err)
	default:
		e.Msg = fmt.Sprintf("plugin failed with no message (stdout %q): %v", stdout, err)
	}
	return e
}

// Pod is a pod on a node: a network namespace wired by the CNI plugins.
type Pod struct {
	Namespace   string
	Name        string
	UID         string
	ContainerID string // 64 hex digits
	IfName      string
	Netns       string // path of its network namespace
	Node        *Node

	list   *libcni.NetworkConfigList
	rt     *libcni.RuntimeConf
	mu     sync.Mutex
	result types.Result
	gone   bool
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// AddPod creates a pod's network namespace on the node and calls ADD of
// the CNI configuration through libcni, like a kubelet's runtime. When ADD
// fails it calls DEL, removes the namespace and returns the error.
func (n *Node) AddPod(ctx context.Context, cfg PodConfig) (*Pod, error) {
	if cfg.Name == "" {
		return nil, errors.New("pod needs a name")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	if cfg.IfName == "" {
		cfg.IfName = "eth0"
	}
	if cfg.NetConfList == nil {
		cfg.NetConfList = n.NetConfList()
	}
	list, err := libcni.ConfListFromBytes(cfg.NetConfList)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: CNI config: %w", cfg.Namespace, cfg.Name, err)
	}
	u := randHex(16)
	p := &Pod{
		Namespace:   cfg.Namespace,
		Name:        cfg.Name,
		UID:         u[0:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:32],
		ContainerID: randHex(32),
		IfName:      cfg.IfName,
		Node:        n,
		list:        list,
	}
	suffix := "p-" + n.Name + "-" + cfg.Name
	if cfg.Namespace != "default" {
		suffix = "p-" + n.Name + "-" + cfg.Namespace + "-" + cfg.Name
	}
	l := n.lab
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab is closed")
	}
	path, err := createNetns(l.Prefix + "-" + suffix)
	if err == nil {
		p.Netns = path
		l.pods = append(l.pods, p)
	}
	l.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", cfg.Namespace, cfg.Name, err)
	}
	// The runtime brings the pod's loopback up itself (containerd does).
	err = withHandle(path, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("pod %s/%s: lo up: %w", p.Namespace, p.Name, err), deleteNetns(path))
	}
	p.rt = &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       path,
		IfName:      cfg.IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
			{"K8S_POD_UID", p.UID},
		},
		CapabilityArgs: cfg.CapabilityArgs,
	}
	res, err := n.CNIConfig().AddNetworkList(ctx, list, p.rt)
	if err != nil {
		delCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		return nil, errors.Join(fmt.Errorf("CNI ADD of pod %s/%s on %s: %w", p.Namespace, p.Name, n.Name, err), p.Delete(delCtx))
	}
	p.result = res
	l.log.Info("pod added", "pod", p.Namespace+"/"+p.Name, "node", n.Name, "ip", p.IP())
	return p, nil
}

// Result is the CNI result of ADD.
func (p *Pod) Result() types.Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.result
}

// IP is the pod's first address (IPv4 first) from the CNI result; the zero
// Addr when there is none.
func (p *Pod) IP() netip.Addr {
	r := p.Result()
	if r == nil {
		return netip.Addr{}
	}
	cur, err := types100.NewResultFromResult(r)
	if err != nil {
		return netip.Addr{}
	}
	var first netip.Addr
	for _, ipc := range cur.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if a.Is4() {
			return a
		}
		if !first.IsValid() {
			first = a
		}
	}
	return first
}

// IPs are all the pod's addresses from the CNI result, in its order (a
// dual-stack pod has an IPv4 and an IPv6 one).
func (p *Pod) IPs() []netip.Addr {
	r := p.Result()
	if r == nil {
		return nil
	}
	cur, err := types100.NewResultFromResult(r)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ipc := range cur.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// IP6 is the pod's IPv6 address from the CNI result; the zero Addr when
// it has none.
func (p *Pod) IP6() netip.Addr {
	for _, a := range p.IPs() {
		if a.Is6() {
			return a
		}
	}
	return netip.Addr{}
}

// RuntimeConf is what libcni got for this pod (container ID, netns, args).
func (p *Pod) RuntimeConf() *libcni.RuntimeConf { return p.rt }

// NetConfList is the CNI configuration the pod was added with.
func (p *Pod) NetConfList() *libcni.NetworkConfigList { return p.list }

// Check runs CNI CHECK for the pod.
func (p *Pod) Check(ctx context.Context) error {
	return p.Node.CNIConfig().CheckNetworkList(ctx, p.list, p.rt)
}

// Delete calls CNI DEL and removes the pod's namespace. It is idempotent;
// when DEL fails the namespace stays, so Delete can be called again.
func (p *Pod) Delete(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone {
		return nil
	}
	if err := p.Node.CNIConfig().DelNetworkList(ctx, p.list, p.rt); err != nil {
		return fmt.Errorf("CNI DEL of pod %s/%s on %s: %w", p.Namespace, p.Name, p.Node.Name, err)
	}
	if err := deleteNetns(p.Netns); err != nil {
		return err
	}
	p.gone = true
	l := p.Node.lab
	l.mu.Lock()
	l.pods = slices.DeleteFunc(l.pods, func(x *Pod) bool { return x == p })
	l.mu.Unlock()
	return nil
}

// Exec runs a command in the pod's network namespace and returns its
// combined output; the error includes the output.
func (p *Pod) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return execIn(ctx, p.Node.lab, place{Netns: p.Netns}, "pod "+p.Name, name, args...)
}

// Spawn starts a long-running command in the pod (a server), killed when
// ctx ends or by Lab.Close.
func (p *Pod) Spawn(ctx context.Context, name string, args ...string) (*Process, error) {
	return spawnIn(ctx, p.Node.lab, place{Netns: p.Netns}, name, args...)
}

// Ping sends one ICMP echo from the pod to dst and returns the round trip.
func (p *Pod) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	return Ping(ctx, p.Netns, dst, time.Second)
}

// Listen opens a listener inside the pod, e.g. Listen("tcp", ":8080").
func (p *Pod) Listen(network, addr string) (net.Listener, error) {
	return Listen(p.Netns, network, addr)
}

// Dial connects from inside the pod.
func (p *Pod) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return Dial(ctx, p.Netns, network, addr)
}
