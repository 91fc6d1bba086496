package netlab

import (
	"context"
	"errors"
	"os"
	"testing"
)

// NewForTest builds a lab for a test: it skips the test (saying why) when
// not root, fails it when the lab cannot be built, prints every node's
// daemon log when the test failed, and closes the lab at the end.
func NewForTest(t testing.TB, cfg Config) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, mounts and nftables")
	}
	l, err := New(context.Background(), cfg)
	if errors.Is(err, ErrUnsupported) {
		t.Skip(err.Error())
	}
	if err != nil {
		t.Fatalf("build lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.Nodes() {
				if log := n.Log(); log != "" {
					t.Logf("daemon log of %s (%s):\n%s", n.Name, n.Addr, log)
				}
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return l
}
