package kubelab

import (
	"context"
	"errors"
	"testing"
)

// StartForTest starts a lab for t and stops it when t ends; a failing test
// gets the tail of both servers' logs. It skips t when etcd or
// kube-apiserver is not installed and fails it when they do not start.
func StartForTest(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	c, err := Start(context.Background(), cfg)
	if errors.Is(err, ErrMissingBinary) {
		t.Skipf("no Kubernetes API for this test: %v", err)
	}
	if err != nil {
		t.Fatalf("start kubelab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubelab logs (%s):\n%s", c.Server(), c.LogTail(40))
		}
		if err := c.Close(); err != nil {
			t.Errorf("close kubelab: %v", err)
		}
	})
	return c
}
