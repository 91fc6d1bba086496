package tests

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDemo runs `weft demo` as a user would and checks what it promises:
// a meshed cluster, pods on every node, every pair pinging, and nothing but
// WireGuard and gossip on the underlay.
func TestDemo(t *testing.T) {
	if weftBinary == "" || os.Geteuid() != 0 {
		t.Skip("needs root and the weft binary: the demo builds network namespaces")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, weftBinary, "demo").CombinedOutput()
	if err != nil {
		t.Fatalf("weft demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"full mesh of 3 nodes",
		"all 6 pairs answer",
		"all 30 pairs answer",
		"pod addresses in clear: 0",
		" 0 other;",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
