package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// weftBinary is a static weft binary: $WEFT_BINARY (the Makefile exports
// bin/weft) when it exists, else one built for this test.
func weftBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WEFT_BINARY"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if testing.Short() {
		t.Skip("-short: no weft binary at $WEFT_BINARY and building one takes a while")
	}
	out := filepath.Join(t.TempDir(), "weft")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/weftnet/weft")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build weft: %v\n%s", err, b)
	}
	return out
}

func TestImage(t *testing.T) {
	bin := weftBinary(t)
	dir := t.TempDir()
	o := options{Binary: bin, Tag: "ghcr.io/weftnet/weft:v0.0.0-test", Revision: "abc", Created: time.Unix(0, 0).UTC()}

	// Reproducible: two builds, same digest and the same bytes.
	var digests []v1.Hash
	var tars [][]byte
	for i := range 2 {
		o.Out = filepath.Join(dir, "image"+string(rune('0'+i))+".tar")
		d, err := build(o)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(o.Out)
		if err != nil {
			t.Fatal(err)
		}
		digests, tars = append(digests, d), append(tars, data)
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds of the same binary: digests %s and %s", digests[0], digests[1])
	}
	if !bytes.Equal(tars[0], tars[1]) {
		t.Errorf("two builds of the same binary wrote different tarballs")
	}
	t.Logf("image %s@%s", o.Tag, digests[0])

	// As a docker archive (manifest.json).
	img, err := tarball.ImageFromPath(o.Out, nil)
	if err != nil {
		t.Fatalf("read the tarball as a docker archive: %v", err)
	}
	// (docker archives carry no manifest: the reader makes its own, so
	// compare the config, which names the layers by digest.)
	checkConfig(t, img)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	extracted := extractBinary(t, layers[0], filepath.Join(dir, "extracted-weft"))

	// The binary from the layer is the one we put in and it runs.
	want, _ := os.ReadFile(bin)
	got, _ := os.ReadFile(extracted)
	if !bytes.Equal(got, want) {
		t.Fatal("the binary in the layer differs from the input")
	}
	out, err := exec.Command(extracted, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("weft version from the image: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "weft") {
		t.Errorf("weft version printed %q", out)
	}

	// As an OCI layout (the same tar, unpacked).
	layoutDir := filepath.Join(dir, "layout")
	untar(t, o.Out, layoutDir)
	p, err := layout.FromPath(layoutDir)
	if err != nil {
		t.Fatalf("read the OCI layout: %v", err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != digests[0] ||
		im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v0.0.0-test" {
		t.Errorf("index.json = %+v", im)
	}
	oci, err := p.Image(digests[0])
	if err != nil {
		t.Fatal(err)
	}
	checkConfig(t, oci)
	dockerCfg, _ := img.ConfigName()
	ociCfg, _ := oci.ConfigName()
	if dockerCfg != ociCfg {
		t.Errorf("docker archive's config %s, OCI layout's %s", dockerCfg, ociCfg)
	}

	// Another binary, another digest.
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, append(want, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	o.Binary, o.Out = other, filepath.Join(dir, "other.tar")
	if d, err := build(o); err != nil || d == digests[0] {
		t.Errorf("another binary: digest %s, %v; want a different one", d, err)
	}
}

func checkConfig(t *testing.T, img v1.Image) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if len(c.Entrypoint) != 1 || c.Entrypoint[0] != BinaryPath || c.User != nonRootUser {
		t.Errorf("config = %+v; want entrypoint %s, user %s", c, BinaryPath, nonRootUser)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	for _, l := range []string{"title", "source", "version", "revision", "created"} {
		if c.Labels["org.opencontainers.image."+l] == "" {
			t.Errorf("no label org.opencontainers.image.%s in %v", l, c.Labels)
		}
	}
	if !cf.Created.Time.Equal(time.Unix(0, 0)) {
		t.Errorf("created %v, want the epoch", cf.Created)
	}
}

// extractBinary checks the layer holds exactly the directories to the
// binary and the binary, and writes the binary to dst.
func extractBinary(t *testing.T, l v1.Layer, dst string) string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	found := false
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if !hdr.ModTime.Equal(time.Unix(0, 0)) || hdr.Uid != 0 || hdr.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d; want the epoch and root", hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid)
		}
		if "/"+hdr.Name == BinaryPath {
			found = true
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	want := []string{"usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/weft"}
	if strings.Join(names, " ") != strings.Join(want, " ") || !found {
		t.Errorf("layer holds %v, want %v", names, want)
	}
	return dst
}

func untar(t *testing.T, src, dst string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, filepath.FromSlash(hdr.Name))
		if !strings.HasPrefix(p, dst+string(filepath.Separator)) {
			t.Fatalf("tar entry %q leaves the directory", hdr.Name)
		}
		if hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSourceDateEpoch(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{{"", 0, true}, {"1700000000", 1700000000, true}, {"x", 0, false}, {"-1", 0, false}} {
		got, err := sourceDateEpoch(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got.Unix() != tt.want) {
			t.Errorf("sourceDateEpoch(%q) = %v, %v", tt.in, got, err)
		}
	}
}

// TestOtherBinary: -path and -cmd put another binary at another place, as
// the kubelet tests' pod image does; the layer holds only the directories
// down to it.
func TestOtherBinary(t *testing.T) {
	bin, err := os.ReadFile("/proc/self/exe") // any ELF binary of this machine
	if err != nil {
		t.Skip("no /proc/self/exe:", err)
	}
	src := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(src, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, cmd string
		layer     []string
	}{
		{"/agent", "pause", []string{"agent"}},
		{"/opt/x/agent", "serve :8080", []string{"opt/", "opt/x/", "opt/x/agent"}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			o := options{Binary: src, Tag: "weft.test/agent:1", Path: tc.path, Cmd: strings.Fields(tc.cmd),
				Out: filepath.Join(t.TempDir(), "agent.tar"), Created: time.Unix(0, 0).UTC()}
			if _, err := build(o); err != nil {
				t.Fatal(err)
			}
			img, err := tarball.ImageFromPath(o.Out, nil)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if got := cf.Config.Entrypoint; len(got) != 1 || got[0] != tc.path {
				t.Errorf("entrypoint %q, want [%s]", got, tc.path)
			}
			if got := strings.Join(cf.Config.Cmd, " "); got != tc.cmd {
				t.Errorf("cmd %q, want %q", got, tc.cmd)
			}
			layers, err := img.Layers()
			if err != nil || len(layers) != 1 {
				t.Fatalf("layers %d, %v; want 1", len(layers), err)
			}
			rc, err := layers[0].Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			var names []string
			tr := tar.NewReader(rc)
			for {
				hdr, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, hdr.Name)
			}
			if strings.Join(names, " ") != strings.Join(tc.layer, " ") {
				t.Errorf("layer holds %v, want %v", names, tc.layer)
			}
		})
	}
	o := options{Binary: src, Tag: "weft.test/agent:1", Path: "agent", Out: filepath.Join(t.TempDir(), "x.tar")}
	if _, err := build(o); err == nil {
		t.Errorf("-path agent (relative) was taken")
	}
}
