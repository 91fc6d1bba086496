package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/netlab"
	"github.com/weftnet/weft/policy"
)

// testPolicyWhy: `weft why`, run as a user runs it in a node, gives the
// verdict the real probe finds, names the rule that allowed or came
// nearest and what it lacked, says which node's rules judged each
// direction, and gives a denied packet the reason the drop log gives it.
//
// x/a takes TCP 80 from the namespaces labelled team=blue (x and y, not
// z). y/b is on another node than x/a, z/b on the same one.
func testPolicyWhy(t *testing.T, ctx context.Context, c *policyCluster) {
	pol := netpol("x", "why-web", podIs("a"), ingressOnly,
		ingressRules(rule(ports(portNum(corev1.ProtocolTCP, 80)), peer(nil, labelsOf("team", "blue")))), nil)
	c.createPolicies(t, ctx, []*networkingv1.NetworkPolicy{pol})
	defer func() {
		c.deleteAllPolicies(t, ctx)
		c.waitMatrix(t, ctx, "after deleting the policies")
	}()
	if !c.waitMatrix(t, ctx, "with x/why-web") {
		return
	}
	dst, yb, zb := c.pod("x", "a"), c.pod("y", "b"), c.pod("z", "b")
	if yb.node == dst.node || zb.node != dst.node {
		t.Fatalf("the model moved: y/b on %s, z/b on %s, x/a on %s", yb.node.Name, zb.node.Name, dst.node.Name)
	}
	var third *netlab.Node // the node of neither end of y/b -> x/a
	for _, n := range c.nodes {
		if n != dst.node && n != yb.node {
			third = n
		}
	}
	const denial = "default deny: pod x/a is selected for ingress by policy x/why-web and no rule matched; nearest rule x/why-web ingress[0]: "
	tests := []struct {
		name     string
		on       *netlab.Node // where weft why runs
		src      *policyPod
		srcArg   string // as given to weft why
		port     probePort
		portArg  string
		allowed  bool
		reason   string
		lacks    []string
		humanHas string
	}{
		{"allowed, asked on a third node", third, yb, "y/b", probePort{corev1.ProtocolTCP, 80}, "80/tcp", true,
			"egress: pod y/b is selected by no policy for egress; ingress of pod x/a allowed by x/why-web ingress[0]", nil,
			"allowed by: x/why-web ingress[0]"},
		{"denied by port, asked on the destination's node", dst.node, yb, "y/b", probePort{corev1.ProtocolTCP, 81}, "81/tcp", false,
			denial + "port 81/TCP not in [80/TCP]", []string{"port 81/TCP not in [80/TCP]"},
			"- port 81/TCP not in [80/TCP]"},
		{"denied by namespace label, asked on the source's node by address", yb.node, zb, zb.ip.String(), probePort{corev1.ProtocolTCP, 80}, "80", false,
			denial + "namespace z lacks label team=blue", []string{"namespace z lacks label team=blue"},
			"- namespace z lacks label team=blue"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"why", tt.srcArg, "x/a", tt.portArg, "--run-dir", tt.on.RunDir()}
			out, err := tt.on.Exec(ctx, weftBinary, append(args, "--json")...)
			if err != nil {
				t.Fatalf("weft %s --json: %v", strings.Join(args, " "), err)
			}
			var v daemon.WhyAnswer
			if err := json.Unmarshal(out, &v); err != nil {
				t.Fatalf("weft why --json printed what is no answer: %v\n%s", err, out)
			}
			t.Logf("weft why %s x/a %s on %s: %v: %s", tt.srcArg, tt.portArg, tt.on.Name, v.Allowed, v.Reason)
			if v.Allowed != tt.allowed || v.Reason != tt.reason {
				t.Errorf("verdict %v, %q\nwant %v, %q", v.Allowed, v.Reason, tt.allowed, tt.reason)
			}
			if v.AnsweredBy != tt.on.Name || v.Egress.Node != tt.src.node.Name || v.Ingress.Node != dst.node.Name {
				t.Errorf("answered by %q, egress judged by %q, ingress by %q; want %s, %s, %s",
					v.AnsweredBy, v.Egress.Node, v.Ingress.Node, tt.on.Name, tt.src.node.Name, dst.node.Name)
			}
			if v.Src.IP != tt.src.ip || v.Dst.IP != dst.ip || v.Src.Pod != tt.src.String() || v.Proto != policy.ProtoTCP || v.Port != tt.port.port {
				t.Errorf("judged %+v -> %+v %s/%d, want %s (%s) -> %s %s", v.Src, v.Dst, v.Proto, v.Port, tt.src, tt.src.ip, dst.ip, tt.port)
			}
			if !slices.Equal(v.Ingress.Policies, []string{"x/why-web"}) {
				t.Errorf("x/a is isolated by %v, want [x/why-web]", v.Ingress.Policies)
			}
			if tt.lacks != nil && (v.Ingress.Nearest == nil || !slices.Equal(v.Ingress.Nearest.Lacks, tt.lacks)) {
				t.Errorf("nearest rule %+v, want one lacking %q", v.Ingress.Nearest, tt.lacks)
			}
			human, err := tt.on.Exec(ctx, weftBinary, args...)
			if err != nil || !strings.Contains(string(human), tt.humanHas) || !strings.Contains(string(human), "reason: "+tt.reason) {
				t.Errorf("weft %s (%v) does not say %q and the reason:\n%s", strings.Join(args, " "), err, tt.humanHas, human)
			}

			// The real packet does what weft why says.
			pr := probe{from: slices.Index(c.pods, tt.src), to: slices.Index(c.pods, dst), port: tt.port}
			since := time.Now()
			got := c.probeOnce(ctx, pr)
			if !got && tt.allowed {
				got = c.probeOnce(ctx, pr) // a packet lost on a busy machine
			}
			if got != tt.allowed {
				t.Fatalf("the probe %s -> %s %s passed: %v; weft why said %v", tt.src, dst, tt.port, got, tt.allowed)
			}
			if tt.allowed {
				return
			}
			// The drop log of x/a's node explains the same packet alike.
			pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			poll(t, pctx, func() error {
				st, err := policyStatus(pctx, dst.node)
				if err != nil {
					return err
				}
				for _, d := range slices.Backward(st.Recent) {
					if d.Time.After(since) && d.Src == tt.src.ip && d.Dst == dst.ip && d.Proto == "tcp" && d.Port == tt.port.port {
						if d.Reason != v.Reason {
							t.Fatalf("the drop log says %q, weft why %q", d.Reason, v.Reason)
						}
						return nil
					}
				}
				c.probeOnce(pctx, pr) // the samples are rate-limited: send another
				return fmt.Errorf("no sampled drop of %s -> %s %s on %s since %s", tt.src, dst, tt.port, dst.node.Name, since.Format(time.TimeOnly))
			})
		})
	}
}
