package kubenode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/netlab"
)

// Config of a node. Node and Kubeconfig are required.
type Config struct {
	// Node is the netlab node to run in; its weft daemon should run (the
	// CNI plugin asks it), though kubenode does not start it.
	Node *netlab.Node
	// Kubeconfig is the kubelet's, e.g. kubelab's KubeconfigFor
	// "system:node:NAME" in group "system:nodes".
	Kubeconfig string
	// Binaries default as FindBinaries says.
	Binaries Binaries
	// WeftBinary runs `weft install-cni`. Default: the lab's weft binary.
	WeftBinary string
	// Images are OCI or docker-save tarballs imported into containerd
	// before the kubelet starts. SandboxImage must be among them.
	Images []string
	// SandboxImage is the pause image. Default: AgentImage.
	SandboxImage string
	// MaxPods of the kubelet. Default: 30.
	MaxPods int
	// StartTimeout bounds the wait for containerd's socket and the image
	// imports. Default: 2 minutes.
	StartTimeout time.Duration
	// Logger gets progress messages. Default: discard.
	Logger *slog.Logger
}

// Node is a running containerd and kubelet in a netlab node.
type Node struct {
	cfg    Config
	bins   Binaries
	name   string
	dir    string // the node's kube directory on the host
	cgroup string // the node's cgroup root, e.g. /weftlab-0a1b2c/node2
	mounts map[string]string

	holder     *netlab.Process
	containerd *process
	kubelet    *process

	mu       sync.Mutex
	closed   bool
	closeErr error
}

// Name is the Node's name (the netlab node's).
func (n *Node) Name() string { return n.name }

// Dir is the node's directory on the host: configurations, logs, and what
// the node sees as /var/lib, /run and /var/log.
func (n *Node) Dir() string { return n.dir }

// CgroupRoot is the kubelet's cgroupRoot.
func (n *Node) CgroupRoot() string { return n.cgroup }

// ContainerdSocket is the host path of containerd's socket, for ctr or a
// CRI client in the test.
func (n *Node) ContainerdSocket() string {
	return filepath.Join(n.dir, "run", strings.TrimPrefix(ContainerdSocket, "/run/"))
}

// Start runs containerd and the kubelet in cfg.Node. On error everything it
// started is stopped again. ctx bounds only the start.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Node == nil || cfg.Kubeconfig == "" {
		return nil, errors.New("kubenode: Config.Node and Config.Kubeconfig are required")
	}
	bins, err := FindBinaries(cfg.Binaries)
	if err != nil {
		return nil, err
	}
	if cfg.WeftBinary == "" {
		cfg.WeftBinary = os.Getenv("WEFT_BINARY")
	}
	if cfg.SandboxImage == "" {
		cfg.SandboxImage = AgentImage
	}
	if cfg.MaxPods == 0 {
		cfg.MaxPods = 30
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	mounts, err := cgroupV1Mounts()
	if err != nil {
		return nil, err
	}
	ln := cfg.Node
	// The lab's directory is named after its prefix (weftlab-0a1b2c), so
	// is the node's cgroup root: unique on the machine, and recognisable.
	n := &Node{
		cfg: cfg, bins: bins, name: ln.Name, mounts: mounts,
		dir:    filepath.Join(ln.Dir, "kube"),
		cgroup: "/" + filepath.Base(filepath.Dir(ln.Dir)) + "/" + ln.Name,
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	if err := n.start(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("start kubenode %s: %w", n.name, err), n.Close())
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	c := nodeConfig{
		Name:         n.name,
		Addr:         n.cfg.Node.Addr,
		CgroupRoot:   n.cgroup,
		CNIBinDir:    filepath.Join(n.dir, "cni", "bin"),
		CNIConfDir:   filepath.Join(n.dir, "cni", "net.d"),
		SandboxImage: n.cfg.SandboxImage,
		Runc:         n.bins.Runc,
		MaxPods:      n.cfg.MaxPods,
	}
	containerdConf, err := render(containerdTemplate, c)
	if err != nil {
		return err
	}
	kubeletConf, err := render(kubeletTemplate, c)
	if err != nil {
		return err
	}
	files := map[string][]byte{"containerd.toml": containerdConf, "kubelet.yaml": kubeletConf}
	for i, kd := range kernelDefaults {
		files[fmt.Sprintf("sysctl/%d", i)] = []byte(kd.Value + "\n")
	}
	if err := writeFiles(n.dir, files); err != nil {
		return fmt.Errorf("write the node's files: %w", err)
	}
	for _, d := range []string{"var-lib", "run", "log", c.CNIBinDir, c.CNIConfDir} {
		if err := os.MkdirAll(filepath.Join(n.dir, strings.TrimPrefix(d, n.dir)), 0o755); err != nil {
			return err
		}
	}
	if err := n.installCNI(ctx, c); err != nil {
		return err
	}

	runtimeCgroup := n.cgroup + "/runtime"
	if err := makeCgroup(n.mounts, runtimeCgroup); err != nil {
		return err
	}
	if err := n.startHolder(runtimeCgroup); err != nil {
		return err
	}

	env := []string{"PATH=" + filepath.Dir(n.bins.Containerd) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	holder, netns := n.holder.PID(), n.cfg.Node.Netns
	n.containerd, err = startProcess("containerd", holder, netns, filepath.Join(n.dir, "containerd.log"),
		n.bins.Containerd, []string{"--config", filepath.Join(n.dir, "containerd.toml")}, env)
	if err != nil {
		return err
	}
	if err := joinCgroup(n.mounts, runtimeCgroup, n.containerd.cmd.Process.Pid); err != nil {
		return err
	}
	if err := n.waitContainerd(ctx); err != nil {
		return err
	}
	for _, img := range n.cfg.Images {
		if err := n.importImage(ctx, img); err != nil {
			return err
		}
	}
	n.cfg.Logger.Info("containerd ready", "node", n.name, "images", len(n.cfg.Images))

	n.kubelet, err = startProcess("kubelet", holder, netns, filepath.Join(n.dir, "kubelet.log"),
		n.bins.Kubelet, kubeletArgs(c, filepath.Join(n.dir, "kubelet.yaml"), n.cfg.Kubeconfig), env)
	if err != nil {
		return err
	}
	if err := joinCgroup(n.mounts, runtimeCgroup, n.kubelet.cmd.Process.Pid); err != nil {
		return err
	}
	n.cfg.Logger.Info("kubelet started", "node", n.name, "pid", n.kubelet.cmd.Process.Pid)
	return nil
}

// installCNI runs `weft install-cni` into the node's CNI directories, with
// the socket of the node's daemon.
func (n *Node) installCNI(ctx context.Context, c nodeConfig) error {
	if n.cfg.WeftBinary == "" {
		return errors.New("no weft binary for install-cni: set Config.WeftBinary or $WEFT_BINARY")
	}
	out, err := exec.CommandContext(ctx, n.cfg.WeftBinary, "install-cni",
		"--bin-dir", c.CNIBinDir, "--conf-dir", c.CNIConfDir, "--socket", n.cfg.Node.SocketPath()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("weft install-cni: %w: %s", err, out)
	}
	return nil
}

// startHolder starts the process that keeps the node's mount namespace
// (netlab gives it one of its own, a slave of the host's) and mounts the
// node's directories and the kernel defaults in it.
func (n *Node) startHolder(cgroup string) error {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return fmt.Errorf("the holder of the mount namespace runs sleep: %w", err)
	}
	n.holder, err = n.cfg.Node.StartCmd(exec.Command(sleep, "infinity"))
	if err != nil {
		return fmt.Errorf("start the holder of the mount namespace: %w", err)
	}
	if err := joinCgroup(n.mounts, cgroup, n.holder.PID()); err != nil {
		return err
	}
	ms := []mount{
		{Source: filepath.Join(n.dir, "var-lib"), Target: "/var/lib", Flags: unix.MS_BIND},
		{Source: filepath.Join(n.dir, "run"), Target: "/run", Flags: unix.MS_BIND},
		{Source: filepath.Join(n.dir, "log"), Target: "/var/log", Flags: unix.MS_BIND},
	}
	for i, kd := range kernelDefaults {
		ms = append(ms, mount{Source: filepath.Join(n.dir, "sysctl", fmt.Sprint(i)), Target: kd.Path, Flags: unix.MS_BIND})
	}
	return mountAll(n.holder.PID(), ms)
}

// ctr runs containerd's CLI against the node's containerd, in the CRI's
// namespace.
func (n *Node) ctr(ctx context.Context, args ...string) ([]byte, error) {
	args = append([]string{"--address", n.ContainerdSocket(), "--namespace", "k8s.io"}, args...)
	out, err := exec.CommandContext(ctx, n.bins.Ctr(), args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %w: %s", strings.Join(args[4:], " "), err, out)
	}
	return out, nil
}

func (n *Node) waitContainerd(ctx context.Context) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := n.ctr(ctx, "version")
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for containerd: %w (last error: %v)\n%s", ctx.Err(), err, n.ContainerdLogTail(20))
		case <-n.containerd.done:
			return fmt.Errorf("wait for containerd: %w\n%s", n.containerd.exitError(), n.ContainerdLogTail(20))
		case <-tick.C:
		}
	}
}

// importImage imports an image tarball and unpacks it for the CRI's
// snapshotter.
func (n *Node) importImage(ctx context.Context, tarball string) error {
	_, err := n.ctr(ctx, "images", "import", "--snapshotter", "overlayfs", tarball)
	return err
}

// ContainerdLogTail and KubeletLogTail return the last lines of their logs.
func (n *Node) ContainerdLogTail(lines int) string { return n.containerd.tail(lines) }

// KubeletLogTail returns the last lines of the kubelet's log.
func (n *Node) KubeletLogTail(lines int) string { return n.kubelet.tail(lines) }

// KubeletRunning tells whether the kubelet still runs.
func (n *Node) KubeletRunning() bool { return n.kubelet.running() }

// ContainerdRunning tells whether containerd still runs.
func (n *Node) ContainerdRunning() bool { return n.containerd.running() }

// Close stops the kubelet, containerd, every container and the holder,
// and removes the node's cgroups; the mounts vanish with the namespace.
// Pods are not deleted from the API. It may be called more than once.
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return n.closeErr
	}
	n.closed = true
	errs := []error{n.kubelet.stop(10 * time.Second), n.containerd.stop(10 * time.Second)}
	// Shims and containers left: SIGKILL by cgroup, the holder with them.
	errs = append(errs, killCgroup(n.mounts, n.cgroup, 30*time.Second))
	if n.holder != nil {
		n.holder.Kill()
		select {
		case <-n.holder.Done():
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("the holder of %s's mount namespace (pid %d) did not exit", n.name, n.holder.PID()))
		}
	}
	errs = append(errs, removeCgroup(n.mounts, n.cgroup, 10*time.Second))
	// The lab's cgroup directory goes when its last node goes.
	parent := filepath.Dir(n.cgroup)
	for _, root := range hierarchyDirs(n.mounts) {
		_ = os.Remove(filepath.Join(root, parent))
	}
	n.closeErr = errors.Join(errs...)
	return n.closeErr
}
