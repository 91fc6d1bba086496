package tests

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/netlab"
	"github.com/weftnet/weft/tests/kubelab"
)

// kubeDaemonWired says the daemon uses package kube: seeds from the Node
// list with --kubeconfig, the Secret when no --secret-file is given, the
// genesis ConfigMap, annotations and condition on its Node, and the
// Reclaimer. Flip it when daemon/ wires them; WEFT_TEST_KUBE_DAEMON=1 runs
// the test before that.
const kubeDaemonWired = false

// TestKubeDaemons runs real daemons in lab nodes against a kube-apiserver
// in the lab's underlay, as the DaemonSet would: no --peers, no
// --secret-file, the ServiceAccount's rights only.
func TestKubeDaemons(t *testing.T) {
	if !kubeDaemonWired && os.Getenv("WEFT_TEST_KUBE_DAEMON") != "1" {
		t.Skip("waits for the daemon's --kubeconfig support (package kube wired into daemon/); WEFT_TEST_KUBE_DAEMON=1 runs it anyway")
	}
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()

	// The nodes first: the bridge has ports, so its address below is up
	// for good when the API starts listening on it.
	nodes, err := lab.AddNodes(0, 3)
	if err != nil {
		t.Fatal(err)
	}
	// The API listens on the underlay bridge, where every node reaches it.
	apiAddr := netip.MustParsePrefix("172.30.0.250/24")
	if err := addrOnBridge(lab.Underlay, "br0", apiAddr); err != nil {
		t.Fatal(err)
	}
	kl := kubelab.StartForTest(t, kubelab.Config{Netns: lab.Underlay, BindAddr: apiAddr.Addr()})
	applyObjects(t, ctx, kl, readManifest(t, manifestPath))
	kubeconfig, err := kl.KubeconfigFor(weftSAUser, weftSAGroups)
	if err != nil {
		t.Fatal(err)
	}
	admin := kl.Clientset()
	args := []string{"--kubeconfig", kubeconfig, "--secret-file", "", "--wg-mode", "userspace",
		"--metrics-addr", "", "--reap-time", "20s", "--log-level", "debug"}

	// Three Nodes registered, three daemons started at the same moment.
	for _, n := range nodes {
		if err := kl.CreateNode(ctx, n.Name, n.Addr); err != nil {
			t.Fatal(err)
		}
	}
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return args })
	waitMesh(t, ctx, nodes)
	secrets, err := admin.CoreV1().Secrets(kube.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil || len(secrets.Items) != 1 || secrets.Items[0].Name != kube.SecretName {
		t.Fatalf("secrets in kube-system: %v, %v; want the one Secret weft", secrets, err)
	}
	waitNodesPublished(t, ctx, admin, nodes)

	// A fourth Node joins later and is meshed from the Node list.
	n4, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := kl.CreateNode(ctx, n4.Name, n4.Addr); err != nil {
		t.Fatal(err)
	}
	startAll(t, ctx, []*netlab.Node{n4}, func(*netlab.Node) []string { return args })
	all := append(slices.Clone(nodes), n4)
	waitMesh(t, ctx, all)
	waitNodesPublished(t, ctx, admin, all)

	// Pods on the first two nodes talk before and after the reclaim.
	pods := addPods(t, ctx, nodes[:2], 1)
	podsTalk := func() {
		poll(t, ctx, func() error {
			if _, err := pods[0].Ping(ctx, pods[1].IP()); err != nil {
				return fmt.Errorf("ping %s -> %s: %w", pods[0].Name, pods[1].Name, err)
			}
			return nil
		})
	}
	podsTalk()

	// The fourth node owns ranges; its machine dies and its Node object is
	// deleted. Exactly one live node reclaims its ranges.
	before := waitRings(t, ctx, all)
	if len(before[n4.Name]) == 0 {
		t.Fatalf("%s owns no ranges: %s", n4.Name, before)
	}
	if err := n4.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := kl.DeleteNode(ctx, n4.Name); err != nil {
		t.Fatal(err)
	}
	var holder string
	poll(t, ctx, func() error {
		h, err := kube.ReclaimHolder(ctx, admin, n4.Name)
		if err != nil || h == "" {
			return fmt.Errorf("no reclaim claim on %s yet (%v)", n4.Name, err)
		}
		holder = h
		return nil
	})
	var after ring
	poll(t, ctx, func() error {
		after = waitRings(t, ctx, nodes)
		if len(after[n4.Name]) > 0 {
			return fmt.Errorf("%s still owns %v", n4.Name, after[n4.Name])
		}
		return nil
	})
	for _, p := range before[n4.Name] {
		if got := after.owners(p); !slices.Equal(got, []string{holder}) {
			t.Errorf("%s's range %s went to %v, want only the claim's holder %s", n4.Name, p, got, holder)
		}
	}
	podsTalk()
}

// waitNodesPublished waits until every node's Node object carries weft's
// annotations and NetworkUnavailable=False.
func waitNodesPublished(t *testing.T, ctx context.Context, admin kubernetes.Interface, nodes []*netlab.Node) {
	t.Helper()
	poll(t, ctx, func() error {
		for _, n := range nodes {
			node, err := admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, a := range []string{kube.AnnotationPublicKey, kube.AnnotationEndpoint, kube.AnnotationTunnelAddr} {
				if node.Annotations[a] == "" {
					return fmt.Errorf("node %s lacks annotation %s", n.Name, a)
				}
			}
			available := false
			for _, c := range node.Status.Conditions {
				available = available || (c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse)
			}
			if !available {
				return fmt.Errorf("node %s has no NetworkUnavailable=False", n.Name)
			}
		}
		return nil
	})
}

// addrOnBridge gives the bridge named br in the network namespace at path
// the address p, so a server there (the lab's kube-apiserver) is on the
// same L2 as the nodes.
func addrOnBridge(path, br string, p netip.Prefix) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	link, err := h.LinkByName(br)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", br, path, err)
	}
	addr, err := netlink.ParseAddr(p.String())
	if err != nil {
		return err
	}
	if err := h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", p, br, err)
	}
	return nil
}
