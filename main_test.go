package main

import (
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

var (
	buildMu  sync.Mutex
	builtDir string
	built    = map[string]string{} // GOARCH -> binary, built once per run
)

// buildWeft builds the binary the way the Makefile does: static, no cgo;
// each architecture once per test run.
func buildWeft(t *testing.T, goarch string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := built[goarch]; ok {
		return bin
	}
	if builtDir == "" {
		d, err := os.MkdirTemp("", "weft-build-")
		if err != nil {
			t.Fatal(err)
		}
		builtDir = d
	}
	out := filepath.Join(builtDir, goarch, "weft")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build for %s: %v\n%s", goarch, err, b)
	}
	built[goarch] = out
	return out
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

func TestBinaryIsStatic(t *testing.T) {
	for _, arch := range []string{"amd64", "arm64"} {
		t.Run(arch, func(t *testing.T) {
			bin := buildWeft(t, arch)
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			wantMachine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
			if f.Machine != wantMachine {
				t.Errorf("machine = %v, want %v", f.Machine, wantMachine)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
					t.Errorf("binary has %v: it is dynamically linked", p.Type)
				}
			}
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
				t.Errorf("binary imports libraries %v", libs)
			}
		})
	}
}

func TestBinaryAnswers(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("runs the linux binary")
	}
	bin := buildWeft(t, runtime.GOARCH)
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("weft version: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "weft ") || !strings.Contains(string(out), runtime.Version()) {
		t.Errorf("weft version = %q: want version, commit and Go version", out)
	}

	cni := filepath.Join(t.TempDir(), "weft-cni")
	if err := os.Symlink(bin, cni); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cni)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("weft-cni VERSION: %v\n%s", err, out)
	}
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("weft-cni VERSION answered %q: %v", out, err)
	}
	for _, want := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		if !slices.Contains(v.SupportedVersions, want) {
			t.Errorf("supported versions %v lack %s", v.SupportedVersions, want)
		}
	}

	for _, sub := range []string{"daemon", "status", "rmpeer", "install-cni", "reset", "demo", "version"} {
		out, err := exec.Command(bin, sub, "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Usage:") {
			t.Errorf("weft %s --help: %v\n%s", sub, err, out)
		}
	}
	out, err = exec.Command(bin, "daemon", "--node-name", "n1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "secret") {
		t.Errorf("daemon without a secret should refuse to start and say how to make one; got %v: %s", err, out)
	}
}

// Started as weft-cni, the binary runs the plugin before the packages only
// the command line and the daemon need initialize (cniplugin/cnimain): a
// plugin call does not pay for client-go's or memberlist's inits. The same
// binary under its own name does initialize them, which shows the check
// sees them.
func TestPluginSkipsDaemonInits(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("runs the linux binary")
	}
	bin := buildWeft(t, runtime.GOARCH)
	cni := filepath.Join(t.TempDir(), "weft-cni")
	if err := os.Symlink(bin, cni); err != nil {
		t.Fatal(err)
	}
	inits := func(path string, args ...string) []string {
		t.Helper()
		cmd := exec.Command(path, args...)
		cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1", "CNI_COMMAND=VERSION")
		cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s%s", filepath.Base(path), args, err, out, stderr.String())
		}
		var pkgs []string
		for line := range strings.Lines(stderr.String()) {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "init" {
				pkgs = append(pkgs, f[1])
			}
		}
		return pkgs
	}
	cli, plugin := inits(bin, "version"), inits(cni)
	for _, prefix := range []string{"k8s.io/client-go/", "k8s.io/api/", "github.com/hashicorp/memberlist",
		// net/http and what waits for it (see package api).
		"net/http", "github.com/prometheus/client_golang/prometheus/promhttp", "go.opentelemetry.io/otel/propagation"} {
		has := func(pkgs []string) bool {
			return slices.ContainsFunc(pkgs, func(p string) bool { return strings.HasPrefix(p, prefix) })
		}
		if !has(cli) {
			t.Errorf("weft version initializes no %s package: the binary no longer links it, drop it from this test", prefix)
		}
		if has(plugin) {
			t.Errorf("weft-cni initializes %s packages: the plugin pays for the daemon's inits; see cniplugin/cnimain", prefix)
		}
	}
	t.Logf("weft-cni initializes %d packages, weft %d", len(plugin), len(cli))
}
