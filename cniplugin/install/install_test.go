package install

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/weftnet/weft/cniplugin"
)

// fakePlugin writes a plugin to dir that answers VERSION with versions.
func fakePlugin(t *testing.T, dir, name string, versions ...string) {
	t.Helper()
	q := `"` + strings.Join(versions, `","`) + `"`
	script := "#!/bin/sh\necho '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[" + q + "]}'\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

func fakeSource(t *testing.T) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "weft")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho weft\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return src
}

type conflistJSON struct {
	CNIVersion  string           `json:"cniVersion"`
	CNIVersions []string         `json:"cniVersions"`
	Name        string           `json:"name"`
	Plugins     []map[string]any `json:"plugins"`
}

func readConflist(t *testing.T, path string) conflistJSON {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c conflistJSON
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatalf("conflist is not JSON: %v\n%s", err, data)
	}
	if _, err := libcni.ConfListFromBytes(data); err != nil {
		t.Fatalf("libcni rejects the conflist: %v\n%s", err, data)
	}
	return c
}

func TestInstallConflist(t *testing.T) {
	tests := []struct {
		name         string
		portmap      []string // versions; nil: no portmap
		wantVersions []string
		wantChain    []string
	}{
		{"portmap with 1.1.0", []string{"0.4.0", "1.0.0", "1.1.0"}, []string{"1.0.0", "1.1.0"}, []string{"weft-cni", "portmap"}},
		{"old portmap", []string{"0.3.1", "0.4.0", "1.0.0"}, []string{"1.0.0"}, []string{"weft-cni", "portmap"}},
		{"no portmap", nil, []string{"1.0.0", "1.1.0"}, []string{"weft-cni"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bin, conf := t.TempDir(), t.TempDir()
			if tt.portmap != nil {
				fakePlugin(t, bin, "portmap", tt.portmap...)
			}
			src := fakeSource(t)
			res, err := Install(context.Background(), Config{BinDir: bin, ConfDir: conf, Source: src, Socket: "/run/w/w.sock"})
			if err != nil {
				t.Fatal(err)
			}
			c := readConflist(t, filepath.Join(conf, cniplugin.ConflistName))
			if c.CNIVersion != "1.0.0" || !slices.Equal(c.CNIVersions, tt.wantVersions) || !slices.Equal(res.CNIVersions, tt.wantVersions) {
				t.Errorf("cniVersion %q cniVersions %v (result %v), want 1.0.0 %v", c.CNIVersion, c.CNIVersions, res.CNIVersions, tt.wantVersions)
			}
			var chain []string
			for _, p := range c.Plugins {
				chain = append(chain, p["type"].(string))
			}
			if !slices.Equal(chain, tt.wantChain) {
				t.Errorf("chain %v, want %v", chain, tt.wantChain)
			}
			if w := c.Plugins[0]; w["socket"] != "/run/w/w.sock" || w["mtu"] != 0.0 {
				t.Errorf("weft-cni entry %v", w)
			}
			if len(c.Plugins) > 1 {
				p := c.Plugins[1]
				if caps, _ := p["capabilities"].(map[string]any); caps["portMappings"] != true || p["snat"] != true {
					t.Errorf("portmap entry %v", p)
				}
			}
			want, _ := os.ReadFile(src)
			got, err := os.ReadFile(filepath.Join(bin, cniplugin.BinaryName))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("binary not copied: %v", err)
			}
			if fi, err := os.Stat(filepath.Join(bin, cniplugin.BinaryName)); err != nil || fi.Mode().Perm() != 0o755 {
				t.Errorf("binary mode %v, %v", fi.Mode(), err)
			}
			noTempFiles(t, bin, conf)
		})
	}
}

// TestInstallDebianPortmap asks the real portmap of the distribution, when
// there is one: Debian's 1.1.1 does not know CNI 1.1.0.
func TestInstallDebianPortmap(t *testing.T) {
	const portmap = "/usr/lib/cni/portmap"
	if _, err := os.Stat(portmap); err != nil {
		t.Skip("no " + portmap + " on this machine")
	}
	bin, conf := t.TempDir(), t.TempDir()
	if err := os.Symlink(portmap, filepath.Join(bin, "portmap")); err != nil {
		t.Fatal(err)
	}
	ok, err := supports(context.Background(), portmap, "1.1.0")
	res, ierr := Install(context.Background(), Config{BinDir: bin, ConfDir: conf, Source: fakeSource(t)})
	if ierr != nil {
		t.Fatal(ierr)
	}
	want := []string{"1.0.0"}
	if ok {
		want = append(want, "1.1.0")
	}
	if !slices.Equal(res.CNIVersions, want) {
		t.Errorf("cniVersions %v, want %v (portmap supports 1.1.0: %v, %v)", res.CNIVersions, want, ok, err)
	}
}

func TestInstallAtomic(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	dst := filepath.Join(conf, cniplugin.ConflistName)
	old := []byte(`{"old":true}`)
	if err := os.WriteFile(dst, old, 0o644); err != nil {
		t.Fatal(err)
	}
	oldBin := []byte("old binary")
	if err := os.WriteFile(filepath.Join(bin, cniplugin.BinaryName), oldBin, 0o755); err != nil {
		t.Fatal(err)
	}
	src := fakeSource(t)
	newBin, _ := os.ReadFile(src)

	var seen []string
	testHookBeforeRename = func(tmp, d string) {
		seen = append(seen, d)
		if filepath.Dir(tmp) != filepath.Dir(d) {
			t.Errorf("temporary file %s is not in the directory of %s", tmp, d)
		}
		cur, err := os.ReadFile(d)
		if err != nil {
			t.Errorf("%s gone before the rename: %v", d, err)
		}
		next, _ := os.ReadFile(tmp)
		switch filepath.Base(d) {
		case cniplugin.ConflistName:
			if !bytes.Equal(cur, old) {
				t.Errorf("%s changed before the rename: %s", d, cur)
			}
			if !json.Valid(next) {
				t.Errorf("temporary conflist is not complete JSON: %s", next)
			}
		case cniplugin.BinaryName:
			if !bytes.Equal(cur, oldBin) || !bytes.Equal(next, newBin) {
				t.Errorf("binary: before rename old=%q new=%q", cur, next)
			}
		}
	}
	t.Cleanup(func() { testHookBeforeRename = nil })
	if _, err := Install(context.Background(), Config{BinDir: bin, ConfDir: conf, Source: src}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 {
		t.Errorf("renamed %v, want the binary and the conflist", seen)
	}
	readConflist(t, dst)
	noTempFiles(t, bin, conf)
}

func TestInstallFailureKeepsOldFiles(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	dst := filepath.Join(conf, cniplugin.ConflistName)
	old := []byte(`{"old":true}`)
	if err := os.WriteFile(dst, old, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Install(context.Background(), Config{BinDir: bin, ConfDir: conf, Source: filepath.Join(t.TempDir(), "missing")})
	if err == nil {
		t.Fatal("Install of a missing binary succeeded")
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, old) {
		t.Errorf("conflist changed after a failed install: %s", got)
	}
	if _, err := os.Stat(filepath.Join(bin, cniplugin.BinaryName)); !os.IsNotExist(err) {
		t.Errorf("binary exists after a failed install: %v", err)
	}
	noTempFiles(t, bin, conf)
}

func noTempFiles(t *testing.T, dirs ...string) {
	t.Helper()
	for _, dir := range dirs {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Errorf("temporary file %s left in %s", e.Name(), dir)
			}
		}
	}
}

func TestInstallTwiceKeepsConflist(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	cfg := Config{BinDir: bin, ConfDir: conf, Source: fakeSource(t)}
	if _, err := Install(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	renamed := 0
	testHookBeforeRename = func(_, dst string) {
		if filepath.Base(dst) == cniplugin.ConflistName {
			renamed++
		}
	}
	t.Cleanup(func() { testHookBeforeRename = nil })
	if _, err := Install(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if renamed != 0 {
		t.Error("an unchanged conflist was written again")
	}
	cfg.MTU = 1400
	if _, err := Install(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if renamed != 1 {
		t.Error("a changed conflist was not written")
	}
	if c := readConflist(t, filepath.Join(conf, cniplugin.ConflistName)); c.Plugins[0]["mtu"] != 1400.0 {
		t.Errorf("mtu %v, want 1400", c.Plugins[0]["mtu"])
	}
}
