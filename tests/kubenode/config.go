package kubenode

import (
	"bytes"
	"fmt"
	"net/netip"
	"text/template"
)

// Paths inside a node's mount namespace (see the package comment).
const (
	ContainerdRoot   = "/var/lib/containerd"
	ContainerdState  = "/run/containerd"
	ContainerdSocket = ContainerdState + "/containerd.sock"
	KubeletRoot      = "/var/lib/kubelet"
)

// kernelDefaults are the sysctls the kubelet sets at start
// (setupKernelTunables) with the values it wants; protectKernelDefaults
// makes it check them instead, against the files bound over them.
var kernelDefaults = []struct{ Path, Value string }{
	{"/proc/sys/vm/overcommit_memory", "1"},
	{"/proc/sys/vm/panic_on_oom", "0"},
	{"/proc/sys/kernel/panic", "10"},
	{"/proc/sys/kernel/panic_on_oops", "1"},
	{"/proc/sys/kernel/keys/root_maxkeys", "1000000"},
	{"/proc/sys/kernel/keys/root_maxbytes", "25000000"},
}

// nodeConfig is what the containerd and kubelet configurations of a node
// are made of.
type nodeConfig struct {
	Name         string     // the Node's name
	Addr         netip.Addr // the node's underlay address: node IP, kubelet's listen address
	CgroupRoot   string     // e.g. /weftlab-0a1b2c/node2
	CNIBinDir    string     // weft-cni, as installed by weft install-cni
	CNIConfDir   string     // 10-weft.conflist
	SandboxImage string     // the pause image, imported beforehand
	Runc         string     // the runc binary
	MaxPods      int
}

// containerdTemplate is containerd 2.x's configuration (version 3): the CRI
// plugin with weft's CNI directories, runc through the v2 shim with cgroupfs,
// network namespaces under /run/netns of the node, nothing pulled.
var containerdTemplate = template.Must(template.New("containerd").Parse(`# containerd of kubenode {{.Name}}: paths are in the node's mount namespace.
version = 3
root = "` + ContainerdRoot + `"
state = "` + ContainerdState + `"
disabled_plugins = ["io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing", "io.containerd.nri.v1.nri"]

[grpc]
  address = "` + ContainerdSocket + `"

[ttrpc]
  address = "` + ContainerdSocket + `.ttrpc"

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "` + ContainerdRoot + `/opt"

  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{{.SandboxImage}}"

  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    enable_unprivileged_ports = true
    enable_unprivileged_icmp = true
    # No CAP_SYS_RESOURCE here: oom_score_adj may not go below containerd's.
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["{{.CNIBinDir}}"]
      conf_dir = "{{.CNIConfDir}}"
      max_conf_num = 1
      # The pod's lo is brought up by containerd itself: no loopback plugin.
      use_internal_loopback = true
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          BinaryName = "{{.Runc}}"
          SystemdCgroup = false
`))

// kubeletTemplate is the KubeletConfiguration; the package comment says why
// each unusual field is set.
var kubeletTemplate = template.Must(template.New("kubelet").Parse(`# kubelet of kubenode {{.Name}}: paths are in the node's mount namespace.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "{{.Addr}}"
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: "unix://` + ContainerdSocket + `"
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: "{{.CgroupRoot}}"
cgroupsPerQOS: true
failSwapOn: false
protectKernelDefaults: true
resolvConf: ""
maxPods: {{.MaxPods}}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`))

func render(t *template.Template, c nodeConfig) ([]byte, error) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, c); err != nil {
		return nil, fmt.Errorf("render the %s configuration of %s: %w", t.Name(), c.Name, err)
	}
	return buf.Bytes(), nil
}

// kubeletArgs are the kubelet's flags beside its configuration file.
func kubeletArgs(c nodeConfig, configPath, kubeconfig string) []string {
	return []string{
		"--config=" + configPath,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + KubeletRoot,
		"--hostname-override=" + c.Name,
		"--node-ip=" + c.Addr.String(),
		"--v=2",
	}
}
