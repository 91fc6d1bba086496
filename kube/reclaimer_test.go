package kube

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// reclaimCluster runs one Node watcher and Reclaimer per name in selves on
// one fake API and records every Reclaim call.
type reclaimCluster struct {
	mu    sync.Mutex
	calls []string // "self:node"
}

func (rc *reclaimCluster) start(t *testing.T, client *fake.Clientset, selves []string, alive func(string) bool, owners func() []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, self := range selves {
		nodes, err := NewNodes(NodesConfig{Client: client, Self: self})
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewReclaimer(ReclaimerConfig{
			Client: client, Self: self, Nodes: nodes, Alive: alive, Owners: owners,
			RetryInterval: 5 * time.Millisecond,
			Reclaim: func(_ context.Context, node string) error {
				rc.mu.Lock()
				rc.calls = append(rc.calls, self+":"+node)
				rc.mu.Unlock()
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { nodes.Run(ctx) })
		wg.Go(func() { r.Run(ctx) })
		<-nodes.Synced()
	}
}

func (rc *reclaimCluster) reclaims() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.calls)
}

func TestReclaimerOneWinner(t *testing.T) {
	selves := []string{"a", "b", "c", "d", "e"}
	client := fake.NewClientset(node("a"), node("b"), node("c"), node("d"), node("e"), node("dead"))
	var alive atomic.Bool
	alive.Store(true)
	var creates, aliveAsks atomic.Int32
	client.PrependReactor("create", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		creates.Add(1)
		return false, nil, nil
	})
	rc := &reclaimCluster{}
	rc.start(t, client, selves, func(n string) bool {
		if n != "dead" {
			return false
		}
		aliveAsks.Add(1)
		return alive.Load()
	}, nil)

	if err := client.CoreV1().Nodes().Delete(t.Context(), "dead", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// While its daemon still answers, nobody claims or reclaims.
	waitFor(t, "the watchers to ask whether the node is alive", func() bool { return aliveAsks.Load() >= 10 })
	if n := creates.Load(); n != 0 || len(rc.reclaims()) != 0 {
		t.Fatalf("%d claims and reclaims %v while the node is alive", n, rc.reclaims())
	}
	alive.Store(false)
	// Every reclaimer tries its claim once; then count the reclaims.
	waitFor(t, "five claims", func() bool { return creates.Load() == 5 })
	waitFor(t, "a reclaim", func() bool { return len(rc.reclaims()) > 0 })
	got := rc.reclaims()
	if len(got) != 1 {
		t.Fatalf("reclaims %v, want exactly one", got)
	}
	h, _ := ReclaimHolder(t.Context(), client, "dead")
	if got[0] != h+":dead" {
		t.Errorf("reclaim by %s, claim held by %s", got[0], h)
	}
}

func TestReclaimerOrphans(t *testing.T) {
	client := fake.NewClientset(node("a"), node("b"))
	rc := &reclaimCluster{}
	owners := func() []string { return []string{"a", "b", "gone", "still-alive"} }
	rc.start(t, client, []string{"a", "b"}, func(n string) bool { return n == "still-alive" }, owners)
	waitFor(t, "the orphan reclaimed", func() bool { return len(rc.reclaims()) == 1 })
	if got := rc.reclaims(); got[0] != "a:gone" && got[0] != "b:gone" {
		t.Errorf("reclaims %v", got)
	}
}

func TestReclaimerReleasesOwnClaim(t *testing.T) {
	client := fake.NewClientset(node("a"))
	if _, err := ClaimReclaim(t.Context(), client, "back", "a"); err != nil {
		t.Fatal(err)
	}
	rc := &reclaimCluster{}
	rc.start(t, client, []string{"back"}, nil, nil)
	waitFor(t, "the old claim released", func() bool {
		h, err := ReclaimHolder(t.Context(), client, "back")
		return h == "" && err == nil
	})
}
