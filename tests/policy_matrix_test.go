package tests

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/weftnet/weft/netlab"
)

// TestPolicyMatrixRender checks the matrix diff a failing scenario prints,
// without a cluster.
func TestPolicyMatrixRender(t *testing.T) {
	node := &netlab.Node{Name: "node1"}
	c := &policyCluster{pods: []*policyPod{
		{ns: "x", name: "a", node: node, ip: netip.MustParseAddr("10.32.0.1")},
		{ns: "x", name: "b", node: node, ip: netip.MustParseAddr("10.32.0.2")},
	}}
	tcp80 := probePort{corev1.ProtocolTCP, 80}
	want, got := matrix{}, matrix{}
	for _, pr := range c.allProbes() {
		want[pr], got[pr] = true, true
	}
	want[probe{0, 1, tcp80}] = false // x/a -> x/b should be denied but passed
	want[probe{1, 0, tcp80}], got[probe{1, 0, tcp80}] = false, false
	got[probe{1, 1, tcp80}] = false // x/b -> x/b should pass but was denied
	if n := c.differ(c.allProbes(), want, got); n != 2 {
		t.Errorf("differ = %d, want 2", n)
	}
	out := c.render(want, got)
	for _, line := range []string{
		"TCP/80   x/a  x/b ",
		"x/a      .    +   ",
		"x/b      X    -   ",
		"TCP/81: as expected",
		"UDP/81: as expected",
		"x/b = 10.32.0.2 on node1",
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("render lacks the line %q:\n%s", line, out)
		}
	}
}
