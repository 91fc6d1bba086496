package kubenode

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestConfigGolden: the containerd and kubelet configurations of a node, as
// text, against testdata (go test -update rewrites them).
func TestConfigGolden(t *testing.T) {
	c := nodeConfig{
		Name:         "node2",
		Addr:         netip.MustParseAddr("172.30.0.2"),
		CgroupRoot:   "/weftlab-0a1b2c/node2",
		CNIBinDir:    "/tmp/weftlab-0a1b2c/node2/kube/cni/bin",
		CNIConfDir:   "/tmp/weftlab-0a1b2c/node2/kube/cni/net.d",
		SandboxImage: AgentImage,
		Runc:         "/usr/sbin/runc",
		MaxPods:      30,
	}
	for _, tc := range []struct {
		golden string
		render func() ([]byte, error)
	}{
		{"containerd.toml", func() ([]byte, error) { return render(containerdTemplate, c) }},
		{"kubelet.yaml", func() ([]byte, error) { return render(kubeletTemplate, c) }},
		{"kubelet.args", func() ([]byte, error) {
			return []byte(strings.Join(kubeletArgs(c, "/k/kubelet.yaml", "/k/kubeconfig"), "\n") + "\n"), nil
		}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			got, err := tc.render()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.golden+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if string(got) != string(want) {
				t.Errorf("%s differs from %s (go test -update rewrites it):\n%s", tc.golden, path, got)
			}
		})
	}
}

// TestKernelDefaults: every sysctl the kubelet would write is covered, with
// the value it checks for under protectKernelDefaults.
func TestKernelDefaults(t *testing.T) {
	want := map[string]string{
		"vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10",
		"kernel/panic_on_oops": "1", "kernel/keys/root_maxkeys": "1000000", "kernel/keys/root_maxbytes": "25000000",
	}
	got := map[string]string{}
	for _, kd := range kernelDefaults {
		got[strings.TrimPrefix(kd.Path, "/proc/sys/")] = kd.Value
	}
	if len(got) != len(want) {
		t.Errorf("kernel defaults %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}
