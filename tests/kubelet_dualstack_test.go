package tests

import (
	"context"
	"net/netip"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKubeletDualStack runs real kubelets and containerd on three nodes
// whose daemons have an IPv4 and an IPv6 pod range. The kubelet takes the
// pods' addresses from weft's CNI result: each pod's status.podIPs holds
// one address of each family, from the two ranges, distinct across pods;
// every pod pings and GETs every other over both families, across nodes;
// deleting the pods gives both addresses back.
func TestKubeletDualStack(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	c := newKubeletCluster(t, ctx, 3, "--pod-cidr", dsPodCIDR4.String()+","+dsPodCIDR6.String())
	baseline := allocations(t, ctx, c.nodes)
	for _, n := range c.nodes {
		c.startNode(t, ctx, n)
	}
	c.waitReady(t, ctx, c.nodes)
	pods := runAgentPods(t, ctx, c.cs, c.nodes, 1, "ds")

	// status.podIPs, as the kubelet reports it.
	ip6 := map[string]netip.Addr{}
	seen := map[netip.Addr]string{}
	for _, p := range pods {
		pod, err := c.cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var got []netip.Addr
		for _, pip := range pod.Status.PodIPs {
			a, err := netip.ParseAddr(pip.IP)
			if err != nil {
				t.Fatalf("pod %s: status.podIPs has %q: %v", p.Name, pip.IP, err)
			}
			got = append(got, a)
		}
		if len(got) != 2 || got[0] != p.IP || !dsPodCIDR4.Contains(got[0]) || !dsPodCIDR6.Contains(got[1]) {
			t.Fatalf("pod %s: status.podIPs %v (podIP %s), want its IPv4 address in %s, then one in %s", p.Name, got, p.IP, dsPodCIDR4, dsPodCIDR6)
		}
		for _, a := range got {
			if other, dup := seen[a]; dup {
				t.Fatalf("pods %s and %s both have address %s", other, p.Name, a)
			}
			seen[a] = p.Name
		}
		ip6[p.Name] = got[1]
	}
	t.Logf("status.podIPs: %v", seen)

	// Over IPv4 (the pods' first address) and IPv6, across nodes.
	checkPodsTalk(t, ctx, pods)
	checkPodsTalkAt(t, ctx, pods, " over IPv6", func(p agentPod) netip.Addr { return ip6[p.Name] })

	// Deleted pods give both their addresses back: one allocation holds
	// both, so the count is back where it was.
	deletePods(t, ctx, c.cs, pods)
	waitAllocations(t, ctx, c.nodes, baseline)
}
