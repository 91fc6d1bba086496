// Package kubenode makes a netlab node a real Kubernetes node: containerd
// 2.x with Debian's runc and the kubelet, registered to a test apiserver
// (kubelab), running pods through weft-cni as a real cluster does.
//
// containerd, its runc shim, ctr and the kubelet are built from source by
// `make containerd kubelet` into .cache/bin (never downloaded); runc comes
// from Debian's runc package. Binaries reports ErrMissingBinary when one is
// missing, so tests can skip.
//
// A node's processes share one mount namespace of their own (a holder
// process keeps it), a slave of the host's, inside the node's network
// namespace:
//
//	/var/lib  the node's var-lib directory: kubelet, containerd, CNI cache
//	/run      the node's run directory: containerd's sockets, runc, netns
//	/var/log  the node's log directory: pod logs
//	/proc/sys/{vm,kernel}/...  files holding what the kubelet wants (below)
//
// so nothing of a node is visible on the host or to another node, and it all
// vanishes with the node. The weft daemon runs beside them as in any netlab
// node; `weft install-cni` writes the plugin and its conflist into the node's
// cni directory, which containerd's CRI is pointed at.
//
// What this machine forbids or shares, and what kubenode does about it:
//
//   - cgroup v1 (a hybrid hierarchy; the cgroup2 mount has no controllers):
//     the kubelet refuses it unless failCgroupV1 is false; containerd only
//     warns. cgroupDriver is cgroupfs (no systemd), and each node has its
//     own cgroup root, /<lab prefix>/<node>, in every v1 hierarchy, under
//     which the kubelet makes kubepods. Its runtime processes (holder,
//     containerd, shims, kubelet) sit in <root>/runtime, so Close finds and
//     kills every process of the node, containers included, by cgroup.
//     There is no cgroup namespace: cAdvisor and runc see the host's tree.
//   - host-global sysctls: the kubelet sets vm.overcommit_memory,
//     vm.panic_on_oom, kernel.panic, kernel.panic_on_oops and
//     kernel.keys.root_max{keys,bytes} at start, which would change the
//     whole machine. kubenode binds files holding the values it wants over
//     those /proc/sys entries in the node's mount namespace and sets
//     protectKernelDefaults, so the kubelet only reads them.
//   - no CAP_SYS_RESOURCE (the test's processes lack it): nothing may lower
//     an oom_score_adj, which runc does for every sandbox (-998) and the
//     kubelet for itself (-999, only logged). containerd's
//     restrict_oom_score_adj keeps containers at or above its own score.
//   - no swap accounting: failSwapOn is false.
//   - no kube-proxy, no cluster DNS: pods get no Service routing and no
//     resolv.conf from the host (resolvConf is empty).
//   - eviction thresholds are lowered so a busy shared disk does not taint
//     the nodes with DiskPressure.
//   - no registry: images come from OCI tarballs (BuildAgentImage) imported
//     with ctr; the agent image is also the sandbox (pause) image.
package kubenode

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// ErrMissingBinary says the kubelet, containerd or runc is not there:
// `make kubelet containerd`, apt-get install runc.
var ErrMissingBinary = errors.New("kubelet, containerd or runc missing (make kubelet containerd; apt-get install runc)")

// Binaries are the programs a node runs.
type Binaries struct {
	// Kubelet default: $WEFT_KUBELET, else .cache/bin/kubelet.
	Kubelet string
	// Containerd default: $WEFT_CONTAINERD, else .cache/bin/containerd;
	// containerd-shim-runc-v2 and ctr must sit beside it.
	Containerd string
	// Runc default: /usr/sbin/runc (Debian), else runc on PATH.
	Runc string
}

// Shim is the runc shim beside Containerd; containerd finds it on PATH.
func (b Binaries) Shim() string {
	return filepath.Join(filepath.Dir(b.Containerd), "containerd-shim-runc-v2")
}

// Ctr is containerd's CLI beside Containerd.
func (b Binaries) Ctr() string { return filepath.Join(filepath.Dir(b.Containerd), "ctr") }

// FindBinaries fills in the defaults of b and checks every binary is
// there; the error wraps ErrMissingBinary.
func FindBinaries(b Binaries) (Binaries, error) {
	if b.Kubelet == "" {
		b.Kubelet = fromEnvOrCache("WEFT_KUBELET", "kubelet")
	}
	if b.Containerd == "" {
		b.Containerd = fromEnvOrCache("WEFT_CONTAINERD", "containerd")
	}
	if b.Runc == "" {
		b.Runc = "/usr/sbin/runc"
		if _, err := os.Stat(b.Runc); err != nil {
			if p, err := exec.LookPath("runc"); err == nil {
				b.Runc = p
			}
		}
	}
	for _, bin := range []string{b.Kubelet, b.Containerd, b.Shim(), b.Ctr(), b.Runc} {
		if _, err := os.Stat(bin); err != nil {
			return b, fmt.Errorf("%w: %v", ErrMissingBinary, err)
		}
	}
	return b, nil
}

func fromEnvOrCache(env, name string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	if root, err := RepoRoot(); err == nil {
		return filepath.Join(root, ".cache", "bin", name)
	}
	return filepath.Join(".cache", "bin", name)
}

// RepoRoot is the root of the weft checkout around the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && isWeftModule(data) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no weft checkout around %s", dir)
		}
	}
}

func isWeftModule(gomod []byte) bool {
	const first = "module github.com/weftnet/weft\n"
	return len(gomod) >= len(first) && string(gomod[:len(first)]) == first
}
