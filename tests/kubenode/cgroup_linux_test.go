package kubenode

import (
	"maps"
	"strings"
	"testing"
)

func TestParseCgroupV1Mounts(t *testing.T) {
	hybrid := `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,nosuid,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	for _, tc := range []struct {
		name, mountinfo string
		want            map[string]string
		wantErr         string
	}{
		{"hybrid", hybrid, map[string]string{
			"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
			"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids", "name=systemd": "/sys/fs/cgroup/systemd",
		}, ""},
		{"cgroup2 only", "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", nil, "no cgroup v1 hierarchy"},
		{"no pids", "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", nil, "no cgroup v1 pids hierarchy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCgroupV1Mounts(strings.NewReader(tc.mountinfo))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if dirs := hierarchyDirs(got); len(dirs) != 4 {
				t.Errorf("hierarchy dirs %v, want 4 distinct", dirs)
			}
		})
	}
}
