package tests

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/daemon"
)

// testPolicyDropsExplained: blocked traffic is counted and sampled, and the
// node of the blocked pod says why in `weft status policy`.
func testPolicyDropsExplained(t *testing.T, ctx context.Context, c *policyCluster) {
	c.createPolicies(t, ctx, []*networkingv1.NetworkPolicy{netpol("x", "deny", metav1.LabelSelector{}, ingressOnly, nil, nil)})
	c.waitMatrix(t, ctx, "with default deny in x")
	target := c.pod("x", "a")
	poll(t, ctx, func() error {
		var st daemon.PolicyStatus
		if err := api.NewClient(target.node.SocketPath(), 0).Do(ctx, http.MethodGet, api.PathStatus+"/policy", nil, &st); err != nil {
			return err
		}
		counted := false
		for _, d := range st.Drops {
			if d.Namespace == "x" && d.Name == "a" && d.Packets > 0 {
				counted = true
			}
		}
		if !counted {
			return fmt.Errorf("no drop counted for x/a: %+v", st.Drops)
		}
		for _, d := range st.Recent {
			if d.Pod == "x/a" && d.Dst == target.ip && strings.Contains(d.Reason, "default deny") && strings.Contains(d.Reason, "x/deny") {
				t.Logf("sampled drop: %s %s -> %s %s/%d: %s", d.Direction, d.Src, d.Dst, d.Proto, d.Port, d.Reason)
				return nil
			}
		}
		return fmt.Errorf("no explained drop of x/a among %d recent drops", len(st.Recent))
	})
	c.deleteAllPolicies(t, ctx)
	c.waitMatrix(t, ctx, "after deleting the policies")
}
