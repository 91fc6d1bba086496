package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/netlab"
)

// TestKubeRotation: with a real kube-apiserver, where each peer's key is
// pinned to its Node's annotation, a key rotation passes the pin (the
// Node carries the next key meanwhile, then the new key alone) and loses
// no ping; a new value in the Secret kube-system/weft is taken by every
// daemon without a restart, loses no ping either, and after the overlap
// every node holds only the new secret, whose preshared keys the fresh
// handshakes of another key rotation use.
func TestKubeRotation(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cp, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	kl := startKubelabHelper(t, ctx, cp.Netns, cp.Addr)
	nodes, err := lab.AddNodes(0, 3)
	if err != nil {
		t.Fatal(err)
	}
	applyObjects(t, ctx, kl, readManifest(t, manifestPath))
	admin := kl.Clientset()
	args := []string{"--kubeconfig", kl.saKubeconfig, "--secret-file", "", "--wg-mode", "userspace",
		"--metrics-addr", "", "--log-level", "debug", "--secret-overlap", "15s"}
	for _, n := range nodes {
		if err := registerNode(ctx, admin, n.Name, n.Addr); err != nil {
			t.Fatal(err)
		}
	}
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return args })
	waitMesh(t, ctx, nodes)
	waitNodesPublished(t, ctx, admin, nodes)
	pods := addPods(t, ctx, nodes, 1)
	for _, pair := range [][2]int{{0, 1}, {1, 2}, {2, 0}} {
		poll(t, ctx, func() error { _, err := pods[pair[0]].Ping(ctx, pods[pair[1]].IP()); return err })
	}
	ring := func() []*pinger {
		return []*pinger{startPing(t, ctx, pods[0], pods[1]), startPing(t, ctx, pods[1], pods[2]), startPing(t, ctx, pods[2], pods[0])}
	}

	rotate := func(n *netlab.Node) {
		t.Helper()
		old := publicKey(t, ctx, n)
		if out, err := weftCLI(ctx, n, "rotate-key"); err != nil {
			t.Fatalf("weft rotate-key on %s: %v\n%s\n%s", n.Name, err, out, n.LogTail(30))
		}
		now := publicKey(t, ctx, n)
		waitPeersUse(t, ctx, nodes, n, now, old)
		waitAnnotation(t, ctx, admin, n.Name, now)
	}

	t.Run("key rotation passes the Node pin", func(t *testing.T) {
		pings := ring()
		s := startStream(t, ctx, pods[0], pods[1])
		s.settle(t, ctx, time.Second)
		rotate(nodes[0])
		s.settle(t, ctx, time.Second)
		checkNoLoss(t, pings...)
	})

	t.Run("a new value in the Secret", func(t *testing.T) {
		old := secretsOf(t, ctx, nodes[0]).Held[0]
		pings := ring()
		s := startStream(t, ctx, pods[1], pods[2])
		s.settle(t, ctx, time.Second)
		sec, err := admin.CoreV1().Secrets(kube.Namespace).Get(ctx, kube.SecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sec.Data[kube.SecretKey] = []byte(newSecret(t))
		if _, err := admin.CoreV1().Secrets(kube.Namespace).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		var fresh string
		poll(t, ctx, func() error {
			for _, n := range nodes {
				held := secretsOf(t, ctx, n).Held
				if len(held) != 2 || held[1] != old {
					return fmt.Errorf("%s holds %v, want a new secret beside %s", n.Name, held, old)
				}
				fresh = held[0]
			}
			return nil
		})
		poll(t, ctx, func() error {
			for _, n := range nodes {
				sec := secretsOf(t, ctx, n)
				if len(sec.Held) != 1 || sec.Held[0] != fresh || sec.Gossip != fresh {
					return fmt.Errorf("%s holds %v, gossips with %s; want only %s after the overlap", n.Name, sec.Held, sec.Gossip, fresh)
				}
			}
			return nil
		})
		s.settle(t, ctx, time.Second)
		checkNoLoss(t, pings...)
		// Fresh handshakes with the node that rotates need the new
		// preshared keys.
		rotate(nodes[2])
		for _, pair := range [][2]int{{0, 2}, {2, 1}, {0, 1}} {
			poll(t, ctx, func() error { _, err := pods[pair[0]].Ping(ctx, pods[pair[1]].IP()); return err })
		}
		waitMesh(t, ctx, nodes)
	})
}

// waitAnnotation waits until the Node carries key as its public key and no
// next key.
func waitAnnotation(t *testing.T, ctx context.Context, admin kubernetes.Interface, node, key string) {
	t.Helper()
	poll(t, ctx, func() error {
		n, err := admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := n.Annotations[kube.AnnotationPublicKey]; got != key {
			return fmt.Errorf("Node %s carries key %s, want %s", node, got, key)
		}
		if next, ok := n.Annotations[kube.AnnotationNextPublicKey]; ok {
			return fmt.Errorf("Node %s still carries a next key %s", node, next)
		}
		return nil
	})
}
