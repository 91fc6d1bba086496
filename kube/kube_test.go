package kube

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestNewClient(t *testing.T) {
	t.Run("no kubernetes", func(t *testing.T) {
		t.Setenv("KUBERNETES_SERVICE_HOST", "")
		if _, _, err := NewClient(""); !errors.Is(err, ErrNoKubernetes) {
			t.Fatalf("NewClient(\"\") = %v, want ErrNoKubernetes", err)
		}
	})
	t.Run("kubeconfig", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "kubeconfig")
		conf := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://192.0.2.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		cs, cfg, err := NewClient(path)
		if err != nil {
			t.Fatal(err)
		}
		if cs == nil || cfg.Host != "https://192.0.2.1:6443" || cfg.BearerToken != "abc" {
			t.Errorf("config = %+v", cfg)
		}
	})
	t.Run("missing kubeconfig", func(t *testing.T) {
		if _, _, err := NewClient(filepath.Join(t.TempDir(), "nope")); err == nil || errors.Is(err, ErrNoKubernetes) {
			t.Fatalf("NewClient(missing file) = %v, want a load error", err)
		}
	})
	t.Run("in cluster without token", func(t *testing.T) {
		t.Setenv("KUBERNETES_SERVICE_HOST", "192.0.2.1")
		t.Setenv("KUBERNETES_SERVICE_PORT", "443")
		_, _, err := NewClient("")
		if errors.Is(err, ErrNoKubernetes) {
			t.Fatalf("NewClient in a pod = %v, want the in-cluster config tried", err)
		}
		// Without a mounted token it fails; with one (in a real pod) it works.
		if _, statErr := os.Stat("/var/run/secrets/kubernetes.io/serviceaccount/token"); statErr != nil && err == nil {
			t.Fatal("NewClient in a pod without a token succeeded")
		}
	})
}

func node(name string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}
}

func internal(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
}
func external(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: ip}
}

func TestNodeAddress(t *testing.T) {
	host := corev1.NodeAddress{Type: corev1.NodeHostName, Address: "a"}
	tests := []struct {
		name     string
		node     *corev1.Node
		external bool
		want     string
	}{
		{"internal", node("a", host, internal("10.0.0.1")), false, "10.0.0.1"},
		{"internal wanted, external there", node("a", external("203.0.113.1"), internal("10.0.0.1")), false, "10.0.0.1"},
		{"external", node("a", internal("10.0.0.1"), external("203.0.113.1")), true, "203.0.113.1"},
		{"external missing falls back", node("a", internal("10.0.0.1")), true, "10.0.0.1"},
		{"first of a type", node("a", internal("10.0.0.1"), internal("10.0.0.2")), false, "10.0.0.1"},
		{"no address", node("a", host), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nodeAddress(tt.node, tt.external); got != tt.want {
				t.Errorf("nodeAddress = %q, want %q", got, tt.want)
			}
		})
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNodesWatcher(t *testing.T) {
	client := fake.NewClientset(node("self", internal("10.0.0.1")), node("b", internal("10.0.0.2"), external("203.0.113.2")))
	n, err := NewNodes(NodesConfig{Client: client, Self: "self"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	select {
	case <-n.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("no sync")
	}
	if got := n.Seeds(); !slices.Equal(got, []string{"10.0.0.2"}) {
		t.Errorf("Seeds = %v, want [10.0.0.2]", got)
	}
	if got := n.Names(); !slices.Equal(got, []string{"b", "self"}) {
		t.Errorf("Names = %v", got)
	}
	<-n.Changes() // the one after sync

	nodes := client.CoreV1().Nodes()
	if _, err := nodes.Create(ctx, node("c", internal("10.0.0.3")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node c in seeds", func() bool { return slices.Equal(n.Seeds(), []string{"10.0.0.2", "10.0.0.3"}) })
	select {
	case <-n.Changes():
	case <-time.After(10 * time.Second):
		t.Fatal("no change after a node was added")
	}
	// The public key a daemon publishes on its Node is kept (and only that
	// annotation) for the daemon to pin gossip to.
	if _, ok := n.PublicKey("c"); ok {
		t.Error("PublicKey of a Node without the annotation")
	}
	c, err := nodes.Get(ctx, "c", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.Annotations = map[string]string{AnnotationPublicKey: "key-of-c", "other": "x"}
	if _, err := nodes.Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c's key", func() bool { k, ok := n.PublicKey("c"); return ok && k == "key-of-c" })
	// Two deletions; the reader is slow and still gets both, in order.
	for _, name := range []string{"b", "c"} {
		if err := nodes.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "seeds empty", func() bool { return len(n.Seeds()) == 0 })
	for _, want := range []string{"b", "c"} {
		select {
		case got := <-n.Deleted():
			if got != want {
				t.Errorf("Deleted = %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no deletion of %s", want)
		}
	}
}

func TestNodesExternal(t *testing.T) {
	client := fake.NewClientset(node("self", internal("10.0.0.1")), node("b", internal("10.0.0.2"), external("203.0.113.2")), node("c", internal("10.0.0.3")))
	n, err := NewNodes(NodesConfig{Client: client, Self: "self", UseExternalIP: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go n.Run(ctx)
	<-n.Synced()
	if got := n.Seeds(); !slices.Equal(got, []string{"10.0.0.3", "203.0.113.2"}) {
		t.Errorf("Seeds = %v", got)
	}
}

func TestPublishNode(t *testing.T) {
	ctx := t.Context()
	n := node("a", internal("10.0.0.1"))
	n.Annotations = map[string]string{"other": "kept"}
	client := fake.NewClientset(n)
	info := NodeInfo{PublicKey: "pk=", Endpoint: "10.0.0.1:6784", TunnelAddr: "10.32.0.1"}
	for range 2 {
		if err := PublishNode(ctx, client, "a", info); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := client.CoreV1().Nodes().Get(ctx, "a", metav1.GetOptions{})
	want := map[string]string{"other": "kept", AnnotationPublicKey: "pk=", AnnotationEndpoint: "10.0.0.1:6784", AnnotationTunnelAddr: "10.32.0.1"}
	if !mapsEqual(got.Annotations, want) {
		t.Errorf("annotations = %v, want %v", got.Annotations, want)
	}
	info.TunnelAddr = ""
	if err := PublishNode(ctx, client, "a", info); err != nil {
		t.Fatal(err)
	}
	got, _ = client.CoreV1().Nodes().Get(ctx, "a", metav1.GetOptions{})
	if _, ok := got.Annotations[AnnotationTunnelAddr]; ok {
		t.Errorf("empty TunnelAddr left the annotation: %v", got.Annotations)
	}
	if err := PublishNode(ctx, client, "missing", info); err == nil {
		t.Error("PublishNode on a missing node succeeded")
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestSetNetworkAvailable(t *testing.T) {
	ctx := t.Context()
	n := node("a")
	n.Status.Conditions = []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"},
		{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue, Reason: "NoRouteCreated"},
	}
	client := fake.NewClientset(n)
	if err := SetNetworkAvailable(ctx, client, "a"); err != nil {
		t.Fatal(err)
	}
	got, _ := client.CoreV1().Nodes().Get(ctx, "a", metav1.GetOptions{})
	var sawReady, sawNet bool
	for _, c := range got.Status.Conditions {
		switch c.Type {
		case corev1.NodeReady:
			sawReady = c.Status == corev1.ConditionTrue
		case corev1.NodeNetworkUnavailable:
			sawNet = c.Status == corev1.ConditionFalse && c.Reason == ReasonWeftIsUp
		}
	}
	if !sawReady || !sawNet || len(got.Status.Conditions) != 2 {
		t.Errorf("conditions = %+v", got.Status.Conditions)
	}
	patches := 0
	client.PrependReactor("patch", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		patches++
		return false, nil, nil
	})
	if err := SetNetworkAvailable(ctx, client, "a"); err != nil {
		t.Fatal(err)
	}
	if patches != 0 {
		t.Errorf("SetNetworkAvailable on an available node patched %d times, want 0", patches)
	}
}

func TestEnsureSecret(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset()
	var wg sync.WaitGroup
	got := make([][]byte, 3)
	for i := range got {
		wg.Go(func() {
			s, err := EnsureSecret(ctx, client, "")
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		})
	}
	wg.Wait()
	for i := range got {
		if len(got[i]) != secretLen || !bytes.Equal(got[i], got[0]) {
			t.Fatalf("daemon %d got a secret of %d bytes, different from daemon 0's", i, len(got[i]))
		}
	}
	list, _ := client.CoreV1().Secrets(Namespace).List(ctx, metav1.ListOptions{})
	if len(list.Items) != 1 {
		t.Errorf("%d Secrets, want 1", len(list.Items))
	}

	b64 := bytes.Repeat([]byte{7}, 32)
	for _, tt := range []struct {
		name    string
		data    map[string][]byte
		want    []byte
		wantErr error
	}{
		{"raw", map[string][]byte{SecretKey: bytes.Repeat([]byte{1}, 20)}, bytes.Repeat([]byte{1}, 20), nil},
		{"base64 as in a secret file", map[string][]byte{SecretKey: []byte(base64.StdEncoding.EncodeToString(b64) + "\n")}, b64, nil},
		{"no key", map[string][]byte{"other": b64}, nil, ErrBadSecret},
		{"short", map[string][]byte{SecretKey: []byte("short")}, nil, ErrBadSecret},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: SecretName}, Data: tt.data})
			s, err := EnsureSecret(ctx, client, Namespace)
			if !errors.Is(err, tt.wantErr) || !bytes.Equal(s, tt.want) {
				t.Errorf("EnsureSecret = %x, %v; want %x, %v", []byte(s), err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestEnsureGenesis(t *testing.T) {
	ctx := t.Context()
	cidr := netip.MustParsePrefix("10.32.0.0/12")
	client := fake.NewClientset()
	var wg sync.WaitGroup
	got := make([][]string, 3)
	for i := range got {
		wg.Go(func() {
			seed, err := EnsureGenesis(ctx, client, cidr, []string{string(rune('c' - i)), "z", "z"})
			if err != nil {
				t.Error(err)
			}
			got[i] = seed
		})
	}
	wg.Wait()
	for i := range got {
		if len(got[i]) != 2 || !slices.Equal(got[i], got[0]) {
			t.Fatalf("daemon %d got seed %v, daemon 0 %v", i, got[i], got[0])
		}
	}
	if _, err := EnsureGenesis(ctx, client, netip.MustParsePrefix("10.0.0.0/16"), []string{"a"}); !errors.Is(err, ErrGenesisMismatch) {
		t.Errorf("EnsureGenesis for another CIDR = %v, want ErrGenesisMismatch", err)
	}
	// An unmasked prefix is the same range.
	if _, err := EnsureGenesis(ctx, client, netip.MustParsePrefix("10.32.1.0/12"), nil); err != nil {
		t.Errorf("EnsureGenesis(10.32.1.0/12) = %v", err)
	}
	if _, err := EnsureGenesis(ctx, fake.NewClientset(), cidr, nil); err == nil {
		t.Error("EnsureGenesis with no candidates created a genesis")
	}
}

func TestClaimReclaim(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset(node("live"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var winners []string
	for i := range 5 {
		self := string(rune('a' + i))
		wg.Go(func() {
			won, err := ClaimReclaim(ctx, client, "dead", self)
			if err != nil {
				t.Error(err)
			}
			if won {
				mu.Lock()
				winners = append(winners, self)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("winners = %v, want exactly one", winners)
	}
	if won, err := ClaimReclaim(ctx, client, "dead", winners[0]); !won || err != nil {
		t.Errorf("winner asking again = %v, %v; want true", won, err)
	}
	if h, err := ReclaimHolder(ctx, client, "dead"); h != winners[0] || err != nil {
		t.Errorf("ReclaimHolder = %q, %v", h, err)
	}
	// The claim lives in weft's own namespace, where RBAC grants leases.
	if _, err := client.CoordinationV1().Leases(LeaseNamespace).Get(ctx, ReclaimLeaseName("dead"), metav1.GetOptions{}); err != nil {
		t.Errorf("claim not in %s: %v", LeaseNamespace, err)
	}
	if _, err := ClaimReclaim(ctx, client, "live", "a"); !errors.Is(err, ErrNodeExists) {
		t.Errorf("claim of a live node = %v, want ErrNodeExists", err)
	}
	if won, err := ClaimReclaim(ctx, client, "a", "a"); won || err == nil {
		t.Errorf("claim of self = %v, %v; want an error", won, err)
	}
	// The dead node comes back: its daemon releases the old claim, and a
	// later deletion is claimed anew.
	if err := ReleaseReclaim(ctx, client, "dead"); err != nil {
		t.Fatal(err)
	}
	if err := ReleaseReclaim(ctx, client, "dead"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if won, err := ClaimReclaim(ctx, client, "dead", "e"); !won || err != nil {
		t.Errorf("claim after release = %v, %v; want true", won, err)
	}
}

func TestReclaimLeaseName(t *testing.T) {
	long := string(bytes.Repeat([]byte("n"), 300))
	for _, n := range []string{"node-1", long} {
		name := ReclaimLeaseName(n)
		if len(name) > maxObjectNameLen {
			t.Errorf("name of %d bytes", len(name))
		}
	}
	if ReclaimLeaseName("node-1") != "weft-reclaim-node-1" {
		t.Errorf("ReclaimLeaseName(node-1) = %s", ReclaimLeaseName("node-1"))
	}
	if ReclaimLeaseName(long) == ReclaimLeaseName(long+"x") {
		t.Error("long names collide")
	}
}

func TestPruneReclaims(t *testing.T) {
	ctx := t.Context()
	lease := func(ns, name string, age time.Duration, component string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name),
			CreationTimestamp: metav1.NewTime(time.Now().Add(-age)),
			Labels:            map[string]string{labelName: labelNameValueWeft, labelComponent: component},
		}}
	}
	client := fake.NewClientset(
		lease(LeaseNamespace, "weft-reclaim-old", 25*time.Hour, componentReclaim),
		lease(LeaseNamespace, "weft-reclaim-new", time.Minute, componentReclaim),
		lease(LeaseNamespace, "other-old", 25*time.Hour, "else"),
		// Outside weft's namespace, even with weft's labels: not touched.
		lease("kube-system", "weft-reclaim-older-release", 25*time.Hour, componentReclaim),
	)
	n, err := PruneReclaims(ctx, client, 0)
	if err != nil || n != 1 {
		t.Fatalf("PruneReclaims = %d, %v; want 1", n, err)
	}
	list, _ := client.CoordinationV1().Leases("").List(ctx, metav1.ListOptions{})
	var names []string
	for _, l := range list.Items {
		names = append(names, l.Namespace+"/"+l.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"kube-system/weft-reclaim-older-release", "weft-system/other-old", "weft-system/weft-reclaim-new"}) {
		t.Errorf("left %v", names)
	}
}

// A daemon of this release under an older manifest (rights on Leases in
// kube-system only) is told what to apply.
func TestClaimReclaimSaysWhatToApply(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "", errors.New("no RBAC"))
	})
	_, err := ClaimReclaim(t.Context(), client, "dead", "a")
	if err == nil || !strings.Contains(err.Error(), "apply deploy/weft.yaml") || !strings.Contains(err.Error(), LeaseNamespace) {
		t.Errorf("ClaimReclaim refused = %v; want it to name %s and the manifest", err, LeaseNamespace)
	}
	if !apierrors.IsForbidden(err) {
		t.Errorf("the API's error is not wrapped: %v", err)
	}
}
