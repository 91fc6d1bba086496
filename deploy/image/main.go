// Command image builds weft's container image without Docker: FROM scratch
// plus one layer holding the static binary at /usr/local/bin/weft, written
// as one tarball that is both an OCI image layout (oci-layout, index.json,
// blobs/sha256/...) and a `docker save` archive (manifest.json), so
// `ctr images import`, `podman load`, `docker load`, `skopeo copy
// oci-archive:` and `kind load image-archive` all take it.
//
// The build is reproducible: every timestamp is SOURCE_DATE_EPOCH (default
// 0, the epoch), tar entries are sorted with fixed owners and modes, and
// gzip writes no name or time, so the same binary and flags give the same
// image digest, which it prints.
//
//	go run ./deploy/image -binary bin/weft -tag ghcr.io/weftnet/weft:v0.1.0 -out bin/weft-image.tar
//
// -path and -cmd put another static binary in an image of the same shape
// (the kubelet tests' pod image: go run ./deploy/image -binary agent -path
// /agent -cmd pause -tag weft.test/agent:1 -out agent.tar).
//
// The image's user is 65532 (non-root): `weft version` and the CLI need
// nothing more. The daemon needs root with NET_ADMIN and NET_RAW, which the
// DaemonSet asks for (runAsUser: 0); see deploy/weft.yaml.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BinaryPath is where the image holds the binary (unless -path says
// otherwise); it is the entrypoint.
const BinaryPath = "/usr/local/bin/weft"

// nonRootUser is the image's default user: "nobody" of distroless images.
const nonRootUser = "65532:65532"

type options struct {
	Binary   string    // the static weft binary
	Path     string    // where the image holds it, the entrypoint; "" is BinaryPath
	Cmd      []string  // the image's default arguments; nil is ["daemon"]
	Tag      string    // e.g. ghcr.io/weftnet/weft:v0.1.0
	Out      string    // the tarball to write
	Version  string    // org.opencontainers.image.version
	Revision string    // org.opencontainers.image.revision
	Arch     string    // GOARCH of the binary; "" reads it from the ELF header
	Created  time.Time // every timestamp in the image
}

func main() {
	var o options
	flag.StringVar(&o.Binary, "binary", "bin/weft", "the static weft binary to put in the image")
	flag.StringVar(&o.Tag, "tag", "ghcr.io/weftnet/weft:dev", "image name and tag")
	flag.StringVar(&o.Out, "out", "bin/weft-image.tar", "the image tarball to write")
	flag.StringVar(&o.Version, "version", "", "version label (default: the tag)")
	flag.StringVar(&o.Revision, "revision", "", "source revision label (git commit)")
	flag.StringVar(&o.Path, "path", BinaryPath, "where the image holds the binary, its entrypoint")
	cmd := flag.String("cmd", "daemon", "the image's default arguments, separated by spaces")
	flag.StringVar(&o.Arch, "arch", "", "architecture of the binary (default: read from its ELF header)")
	flag.Parse()
	o.Cmd = strings.Fields(*cmd)
	created, err := sourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(2)
	}
	o.Created = created
	digest, err := build(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Printf("%s@%s\nwrote %s\n", o.Tag, digest, o.Out)
}

// sourceDateEpoch parses SOURCE_DATE_EPOCH (seconds since the epoch); empty
// means the epoch itself.
func sourceDateEpoch(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil || sec < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// build writes the image tarball and returns the image's digest (of its
// manifest).
func build(o options) (v1.Hash, error) {
	ref, err := name.NewTag(o.Tag)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("-tag %q: %w", o.Tag, err)
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("read the binary (run make build first): %w", err)
	}
	if o.Arch == "" {
		if o.Arch, err = elfArch(bin); err != nil {
			return v1.Hash{}, fmt.Errorf("%s: %w", o.Binary, err)
		}
	}
	if o.Version == "" {
		o.Version = ref.TagStr()
	}
	if o.Path == "" {
		o.Path = BinaryPath
	}
	if !path.IsAbs(o.Path) || path.Clean(o.Path) != o.Path || o.Path == "/" {
		return v1.Hash{}, fmt.Errorf("-path %q: want a clean absolute file path such as %s", o.Path, BinaryPath)
	}
	if o.Cmd == nil {
		o.Cmd = []string{"daemon"}
	}
	img, err := image(o, bin)
	if err != nil {
		return v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image digest: %w", err)
	}
	if err := writeArchive(o.Out, ref, img); err != nil {
		return v1.Hash{}, err
	}
	return digest, nil
}

// image assembles the image: scratch, one layer, OCI media types.
func image(o options, bin []byte) (v1.Image, error) {
	layerTar, err := binaryLayer(bin, o.Path, o.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("make layer: %w", err)
	}
	created := v1.Time{Time: o.Created}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: created, CreatedBy: "go run ./deploy/image", Comment: "the static binary at " + o.Path},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = created
	cf.OS = "linux"
	cf.Architecture = o.Arch
	cf.Config = v1.Config{
		Entrypoint: []string{o.Path},
		Cmd:        o.Cmd,
		User:       nonRootUser,
		WorkingDir: "/",
		Env:        []string{"PATH=/usr/local/bin"},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "weft",
			"org.opencontainers.image.description": "weft: an encrypted Kubernetes pod network (node agent, CLI and CNI plugin in one static binary)",
			"org.opencontainers.image.source":      "https://github.com/weftnet/weft",
			"org.opencontainers.image.url":         "https://github.com/weftnet/weft",
			"org.opencontainers.image.version":     o.Version,
			"org.opencontainers.image.revision":    o.Revision,
			"org.opencontainers.image.created":     o.Created.Format(time.RFC3339),
		},
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set image config: %w", err)
	}
	return img, nil
}

// binaryLayer is the uncompressed tar of the one layer: the directories
// down to the binary at file, then the binary, owned by root, every time t.
func binaryLayer(bin []byte, file string, t time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := strings.TrimPrefix(path.Dir(file), "/")
	if dir == "" { // a file at the root
		dir = "."
	}
	var dirs []string
	for d := dir; d != "."; d = path.Dir(d) {
		dirs = append(dirs, d+"/")
	}
	slices.Sort(dirs)
	for _, d := range dirs {
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: t, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	hdr := &tar.Header{
		Typeflag: tar.TypeReg, Name: strings.TrimPrefix(file, "/"), Mode: 0o755,
		Size: int64(len(bin)), ModTime: t, Format: tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// elfArch reads the GOARCH of a Linux ELF binary.
func elfArch(bin []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return "", fmt.Errorf("not an ELF binary (build it for Linux): %w", err)
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	}
	return "", fmt.Errorf("architecture %v: weft images are built for amd64 and arm64 (host is %s)", f.Machine, runtime.GOARCH)
}

// entry is one file of the archive.
type entry struct {
	name string
	data []byte
}

// writeArchive writes img as an OCI layout plus docker's manifest.json in
// one tar, entries sorted, every time the epoch, then renames it into place.
func writeArchive(out string, ref name.Tag, img v1.Image) error {
	entries, err := archiveEntries(ref, img)
	if err != nil {
		return err
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	epoch := time.Unix(0, 0).UTC()
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	for _, e := range entries {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("write %s: %w", out, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("write %s: %w", out, err)
		}
	}
	if err := errors.Join(tw.Close(), f.Close()); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(tmp, out)
}

func archiveEntries(ref name.Tag, img v1.Image) ([]entry, error) {
	manifest, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	configName, err := img.ConfigName()
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	blob := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
	entries := []entry{{blob(digest), manifest}, {blob(configName), config}}
	var layerNames []string
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return nil, err
		}
		rc, err := l.Compressed()
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("compress layer: %w", err)
		}
		entries = append(entries, entry{blob(d), data})
		layerNames = append(layerNames, blob(d))
	}
	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: types.OCIManifestSchema1,
			Digest:    digest,
			Size:      int64(len(manifest)),
			Annotations: map[string]string{
				"io.containerd.image.name":          ref.Name(),
				"org.opencontainers.image.ref.name": ref.TagStr(),
			},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return nil, err
	}
	docker := []map[string]any{{
		"Config":   blob(configName),
		"RepoTags": []string{ref.Name()},
		"Layers":   layerNames,
	}}
	dockerJSON, err := json.Marshal(docker)
	if err != nil {
		return nil, err
	}
	return append(entries,
		entry{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		entry{"index.json", indexJSON},
		entry{"manifest.json", dockerJSON},
	), nil
}
