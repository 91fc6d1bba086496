// Package tests holds the end-to-end tests of weft on a whole cluster on
// this machine (netlab). They need root and skip, saying why, without it.
package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/weftnet/weft/netlab"
)

// weftBinary is the weft binary under test: $WEFT_BINARY (the Makefile
// exports it), else built once by TestMain. "" when the build failed;
// weftBinaryErr says why.
var (
	weftBinary    string
	weftBinaryErr error
)

// labHelpers are programs the tests run inside lab nodes: the test binary
// started again with WEFT_LAB_HELPER=name runs labHelpers[name] instead of
// the tests.
var labHelpers = map[string]func(){}

func TestMain(m *testing.M) {
	if name := os.Getenv("WEFT_LAB_HELPER"); name != "" {
		h, ok := labHelpers[name]
		if !ok {
			fmt.Fprintln(os.Stderr, "tests: no lab helper", name)
			os.Exit(2)
		}
		h()
		os.Exit(0)
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Geteuid() == 0 {
		// Labs of interrupted earlier runs (their owner is gone); live labs
		// of test packages running now are left alone.
		if err := netlab.CleanAll(nil); err != nil {
			fmt.Fprintln(os.Stderr, "tests: clean leftovers of earlier runs:", err)
		}
	}
	weftBinary = os.Getenv("WEFT_BINARY")
	if weftBinary != "" {
		if _, err := os.Stat(weftBinary); err != nil {
			weftBinaryErr = fmt.Errorf("$WEFT_BINARY: %w (run make build)", err)
			weftBinary = ""
		}
		return m.Run()
	}
	if os.Geteuid() != 0 {
		// Every end-to-end test skips without root; no build needed.
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "weft-tests-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	weftBinary, weftBinaryErr = buildWeft(dir)
	if weftBinaryErr == nil {
		// netlab.Config.WeftBinary defaults to $WEFT_BINARY.
		os.Setenv("WEFT_BINARY", weftBinary)
	}
	return m.Run()
}

// buildWeft builds the weft binary of this checkout into dir.
func buildWeft(dir string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("find the module root")
	}
	root := filepath.Dir(filepath.Dir(file))
	out := filepath.Join(dir, "weft")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build weft: %w\n%s", err, b)
	}
	return out, nil
}

// needWeft returns the weft binary or fails the test when there is none.
func needWeft(t testing.TB) string {
	t.Helper()
	if weftBinary == "" {
		if weftBinaryErr == nil {
			t.Skip("needs root: the weft binary is built only for root runs")
		}
		t.Fatalf("no weft binary: %v", weftBinaryErr)
	}
	return weftBinary
}
