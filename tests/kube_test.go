package tests

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/tests/kubelab"
)

// The daemon's identity in a cluster: the ServiceAccount of deploy/weft.yaml.
const (
	weftSAUser   = "system:serviceaccount:kube-system:weft"
	manifestPath = "../deploy/weft.yaml"
)

var weftSAGroups = []string{"system:serviceaccounts", "system:serviceaccounts:kube-system"}

// TestKubeAPI runs weft's Kubernetes side against a real kube-apiserver and
// etcd: the manifest applied server-side, the RBAC it grants checked verb
// by verb, and every write of package kube done as the weft ServiceAccount,
// raced where only one writer may win. One API serves every subtest (it
// takes a while to start on two cores); they run in order.
func TestKubeAPI(t *testing.T) {
	lab := kubelab.StartForTest(t, kubelab.Config{})
	ctx := t.Context()
	admin := lab.Clientset()

	objs := readManifest(t, manifestPath)
	t.Run("strict validation refuses a misplaced field", func(t *testing.T) {
		bad := objs[0].DeepCopy() // the ServiceAccount
		bad.Object["spec"] = map[string]any{"hostNetwork": true}
		dyn, mapper := dynamicClient(t, lab)
		if err := serverSideApply(ctx, resourceFor(t, dyn, mapper, bad), bad); err == nil {
			t.Fatal("an unknown field was accepted: the apply below would not catch mistakes")
		}
	})
	t.Run("manifest applies server-side", func(t *testing.T) {
		// Apply twice: a second apply of the same file changes nothing and
		// is accepted as well.
		for range 2 {
			applyObjects(t, ctx, lab, objs)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	saKubeconfig, err := lab.KubeconfigFor(weftSAUser, weftSAGroups)
	if err != nil {
		t.Fatal(err)
	}
	sa, _, err := kube.NewClient(saKubeconfig)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("rbac grants what the daemon needs and no more", func(t *testing.T) {
		checkRBAC(t, ctx, sa)
	})
	t.Run("cannot delete or change a Lease, Secret or ConfigMap that is not weft's", func(t *testing.T) {
		checkCannotDelete(t, ctx, admin, sa)
	})

	for i, ip := range []string{"172.30.0.1", "172.30.0.2", "172.30.0.3"} {
		if err := lab.CreateNode(ctx, kubeNodeName(i), netip.MustParseAddr(ip)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("own node annotations and condition", func(t *testing.T) {
		info := kube.NodeInfo{PublicKey: "cHVibGljLWtleS1vZi1ub2RlLTAtMzItYnl0ZXMhIQ==", Endpoint: "172.30.0.1:6784", TunnelAddr: "10.32.0.1"}
		for range 2 { // idempotent
			if err := kube.PublishNode(ctx, sa, kubeNodeName(0), info); err != nil {
				t.Fatal(err)
			}
			if err := kube.SetNetworkAvailable(ctx, sa, kubeNodeName(0)); err != nil {
				t.Fatal(err)
			}
		}
		node, err := admin.CoreV1().Nodes().Get(ctx, kubeNodeName(0), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]string{
			kube.AnnotationPublicKey: info.PublicKey, kube.AnnotationEndpoint: info.Endpoint, kube.AnnotationTunnelAddr: info.TunnelAddr,
		} {
			if got := node.Annotations[k]; got != want {
				t.Errorf("annotation %s = %q, want %q", k, got, want)
			}
		}
		conds := map[corev1.NodeConditionType]corev1.NodeCondition{}
		for _, c := range node.Status.Conditions {
			conds[c.Type] = c
		}
		if c := conds[corev1.NodeNetworkUnavailable]; c.Status != corev1.ConditionFalse || c.Reason != kube.ReasonWeftIsUp {
			t.Errorf("NetworkUnavailable = %+v, want False/%s", c, kube.ReasonWeftIsUp)
		}
		if c := conds[corev1.NodeReady]; c.Status != corev1.ConditionTrue {
			t.Errorf("the kubelet's Ready condition was lost: %+v", node.Status.Conditions)
		}
	})

	t.Run("secret created once by racing daemons", func(t *testing.T) {
		// Three daemons, each with its own client (own connections), as
		// three processes started at once would be.
		got := make([][]byte, 3)
		var wg sync.WaitGroup
		for i := range got {
			client, _, err := kube.NewClient(saKubeconfig)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				s, err := kube.EnsureSecret(ctx, client, kube.Namespace)
				if err != nil {
					t.Errorf("daemon %d: %v", i, err)
				}
				got[i] = s
			})
		}
		wg.Wait()
		for i := range got {
			if len(got[i]) < 16 || !bytes.Equal(got[i], got[0]) {
				t.Fatalf("daemon %d has a secret of %d bytes unlike daemon 0's", i, len(got[i]))
			}
		}
		stored, err := admin.CoreV1().Secrets(kube.Namespace).Get(ctx, kube.SecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Stored as base64 text, as a secret file holds it.
		if raw, err := base64.StdEncoding.DecodeString(string(stored.Data[kube.SecretKey])); err != nil || !bytes.Equal(raw, got[0]) {
			t.Errorf("the stored Secret (base64 text: %v) differs from what the daemons use", err)
		}
		// A daemon started later reads the same value.
		if s, err := kube.EnsureSecret(ctx, sa, ""); err != nil || !bytes.Equal(s, got[0]) {
			t.Errorf("a later daemon: %v, same value %v", err, bytes.Equal(s, got[0]))
		}
	})

	t.Run("genesis created once by racing daemons", func(t *testing.T) {
		cidr := netip.MustParsePrefix("10.32.0.0/12")
		got := make([][]string, 3)
		var wg sync.WaitGroup
		for i := range got {
			wg.Go(func() {
				// Each daemon offers a different list: itself only.
				seed, err := kube.EnsureGenesis(ctx, sa, cidr, []string{kubeNodeName(i)})
				if err != nil {
					t.Errorf("daemon %d: %v", i, err)
				}
				got[i] = seed
			})
		}
		wg.Wait()
		if len(got[0]) != 1 {
			t.Fatalf("seed %v, want one node's name", got[0])
		}
		for i := range got {
			if !slices.Equal(got[i], got[0]) {
				t.Fatalf("daemon %d adopted seed %v, daemon 0 %v", i, got[i], got[0])
			}
		}
		cm, err := admin.CoreV1().ConfigMaps(kube.Namespace).Get(ctx, kube.GenesisName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("genesis: %v", cm.Data)
		if _, err := kube.EnsureGenesis(ctx, sa, netip.MustParsePrefix("10.100.0.0/16"), []string{"x"}); !errors.Is(err, kube.ErrGenesisMismatch) {
			t.Errorf("a daemon with another --pod-cidr: %v, want ErrGenesisMismatch", err)
		}
	})

	t.Run("reclaim claimed by exactly one of many", func(t *testing.T) {
		const dead = "node-gone"
		var mu sync.Mutex
		var winners []string
		var wg sync.WaitGroup
		for i := range 5 {
			self := "live-" + string(rune('a'+i))
			client, _, err := kube.NewClient(saKubeconfig)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				won, err := kube.ClaimReclaim(ctx, client, dead, self)
				if err != nil {
					t.Errorf("%s: %v", self, err)
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
			t.Fatalf("winners %v, want exactly one", winners)
		}
		if h, err := kube.ReclaimHolder(ctx, sa, dead); err != nil || h != winners[0] {
			t.Errorf("holder %q, %v; want %s", h, err, winners[0])
		}
		if _, err := kube.ClaimReclaim(ctx, sa, kubeNodeName(1), kubeNodeName(0)); !errors.Is(err, kube.ErrNodeExists) {
			t.Errorf("claim on a live Node: %v, want ErrNodeExists", err)
		}
		if err := kube.ReleaseReclaim(ctx, sa, dead); err != nil {
			t.Fatal(err)
		}
		if won, err := kube.ClaimReclaim(ctx, sa, dead, "live-z"); !won || err != nil {
			t.Errorf("claim after release: %v, %v", won, err)
		}
		if n, err := kube.PruneReclaims(ctx, sa, time.Nanosecond); err != nil || n != 1 {
			t.Errorf("PruneReclaims = %d, %v; want 1", n, err)
		}
	})

	t.Run("node watcher sees seeds, new nodes and deletions", func(t *testing.T) {
		w, err := kube.NewNodes(kube.NodesConfig{Client: sa, Self: kubeNodeName(0)})
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
		select {
		case <-w.Synced():
		case <-time.After(30 * time.Second):
			t.Fatal("the Node list did not sync")
		}
		if got, want := w.Seeds(), []string{"172.30.0.2", "172.30.0.3"}; !slices.Equal(got, want) {
			t.Errorf("Seeds = %v, want %v", got, want)
		}
		if err := lab.CreateNode(ctx, kubeNodeName(3), netip.MustParseAddr("172.30.0.4")); err != nil {
			t.Fatal(err)
		}
		waitChange(t, w, "a fourth Node", func() bool { return slices.Contains(w.Seeds(), "172.30.0.4") })
		if err := lab.DeleteNode(ctx, kubeNodeName(2)); err != nil {
			t.Fatal(err)
		}
		select {
		case name := <-w.Deleted():
			if name != kubeNodeName(2) {
				t.Errorf("Deleted = %q, want %s", name, kubeNodeName(2))
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no deletion seen")
		}
		if got, want := w.Seeds(), []string{"172.30.0.2", "172.30.0.4"}; !slices.Equal(got, want) {
			t.Errorf("Seeds after deletion = %v, want %v", got, want)
		}
	})

	t.Run("reclaimers on three nodes reclaim a deleted Node once", func(t *testing.T) {
		rctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		var mu sync.Mutex
		var reclaims []string
		decided := make(chan bool, 3)
		for i := range 3 {
			self := kubeNodeName(i)
			client, _, err := kube.NewClient(saKubeconfig)
			if err != nil {
				t.Fatal(err)
			}
			nodes, err := kube.NewNodes(kube.NodesConfig{Client: client, Self: self})
			if err != nil {
				t.Fatal(err)
			}
			r, err := kube.NewReclaimer(kube.ReclaimerConfig{
				Client: client, Self: self, Nodes: nodes,
				Reclaim: func(_ context.Context, node string) error {
					mu.Lock()
					defer mu.Unlock()
					reclaims = append(reclaims, self+" reclaimed "+node)
					return nil
				},
				Done: func(_ string, reclaimed bool) { decided <- reclaimed },
			})
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() { nodes.Run(rctx) })
			wg.Go(func() { r.Run(rctx) })
			<-nodes.Synced()
		}
		if err := lab.DeleteNode(ctx, kubeNodeName(3)); err != nil {
			t.Fatal(err)
		}
		// Every reclaimer decides, and exactly one of them reclaimed.
		var won int
		for range 3 {
			select {
			case r := <-decided:
				if r {
					won++
				}
			case <-time.After(30 * time.Second):
				t.Fatal("not every reclaimer decided on the deleted Node")
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if won != 1 || len(reclaims) != 1 {
			t.Errorf("%d reclaimed, reclaims %v; want exactly one", won, reclaims)
		}
		if h, err := kube.ReclaimHolder(ctx, admin, kubeNodeName(3)); err != nil || !strings.HasPrefix(reclaims[0], h+" ") {
			t.Errorf("claim held by %q (%v), reclaims %v", h, err, reclaims)
		}
	})

	t.Run("uninstall as the README says", func(t *testing.T) {
		uninstallWeft(t, ctx, lab, objs)
	})
}

// uninstallWeft deletes what `kubectl delete -f deploy/weft.yaml` deletes and
// the objects the daemons made, with the README's commands' selectors, and
// checks nothing of weft is left in the API but the Node annotations.
func uninstallWeft(t *testing.T, ctx context.Context, lab apiAccess, objs []*unstructured.Unstructured) {
	t.Helper()
	dyn, mapper := dynamicClient(t, lab)
	for _, obj := range slices.Backward(objs) {
		ri := resourceFor(t, dyn, mapper, obj)
		err := ri.Delete(ctx, obj.GetName(), metav1.DeleteOptions{})
		if err != nil {
			t.Fatalf("delete %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		// Gone, or (with a finalizer for the garbage collector, which
		// kubelab does not run) being deleted.
		got, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if !apierrors.IsNotFound(err) && (err != nil || got.GetDeletionTimestamp() == nil) {
			t.Errorf("%s %s still there after delete: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
	cs := lab.Clientset()
	ks := kube.Namespace
	if err := cs.CoreV1().Secrets(ks).Delete(ctx, kube.SecretName, metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	if err := cs.CoreV1().ConfigMaps(ks).Delete(ctx, kube.GenesisName, metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=weft"}
	// The reclaim claims live in weft-system, which `kubectl delete -f`
	// deleted above (the namespace controller, which kubelab does not
	// run, then removes what it holds); none are anywhere else.
	leases, err := cs.CoordinationV1().Leases("").List(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Items {
		if l.Namespace != kube.LeaseNamespace {
			t.Errorf("a claim outside %s: %s/%s", kube.LeaseNamespace, l.Namespace, l.Name)
		}
	}
	secrets, err := cs.CoreV1().Secrets(ks).List(ctx, sel)
	if err != nil || len(secrets.Items) != 0 {
		t.Errorf("secrets left: %v, %v", secrets, err)
	}
}

func kubeNodeName(i int) string { return "node-" + string(rune('0'+i)) }

// waitChange waits on the watcher's Changes until cond holds.
func waitChange(t *testing.T, w *kube.Nodes, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for !cond() {
		select {
		case <-w.Changes():
		case <-deadline:
			t.Fatalf("the watcher did not see %s: seeds %v", what, w.Seeds())
		}
	}
}

// readManifest decodes every object of a multi-document YAML file.
func readManifest(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	var objs []*unstructured.Unstructured
	for {
		var obj unstructured.Unstructured
		err := dec.Decode(&obj.Object)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("decode %s: %v", path, err)
		}
		if len(obj.Object) == 0 {
			continue // an empty document
		}
		objs = append(objs, &obj)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind()+"/"+o.GetName())
	}
	// The two Roles: one in kube-system, one in weft's own namespace.
	var roleNS []string
	for _, o := range objs {
		if o.GetKind() == "Role" || o.GetKind() == "RoleBinding" {
			roleNS = append(roleNS, o.GetNamespace())
		}
	}
	if want := []string{"kube-system", "kube-system", kube.LeaseNamespace, kube.LeaseNamespace}; !slices.Equal(roleNS, want) {
		t.Errorf("Roles and RoleBindings in %v, want %v", roleNS, want)
	}
	want := []string{"Namespace/weft-system", "ServiceAccount/weft", "ClusterRole/weft", "ClusterRoleBinding/weft",
		"Role/weft", "RoleBinding/weft", "Role/weft", "RoleBinding/weft", "DaemonSet/weft"}
	if !slices.Equal(kinds, want) {
		t.Errorf("%s holds %v, want %v", path, kinds, want)
	}
	return objs
}

// applyObjects applies objs server-side (not a dry run) with a field
// manager, as `kubectl apply --server-side` does, then reads each back.
func applyObjects(t *testing.T, ctx context.Context, lab apiAccess, objs []*unstructured.Unstructured) {
	t.Helper()
	dyn, mapper := dynamicClient(t, lab)
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		ri := resourceFor(t, dyn, mapper, obj)
		if err := serverSideApply(ctx, ri, obj); err != nil {
			t.Fatalf("server-side apply %s %s/%s: %v", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
		got, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s %s after apply: %v", gvk.Kind, obj.GetName(), err)
		}
		if got.GetUID() == "" {
			t.Errorf("%s %s has no UID", gvk.Kind, obj.GetName())
		}
	}
	// The DaemonSet as the API stored it: what the issue asks of it.
	ds, err := lab.Clientset().AppsV1().DaemonSets("kube-system").Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != "weft" {
		t.Errorf("pod spec: hostNetwork %v, priority class %q, service account %q", spec.HostNetwork, spec.PriorityClassName, spec.ServiceAccountName)
	}
	// Admission resolves the class for Pods, not for templates: it must exist.
	if _, err := lab.Clientset().SchedulingV1().PriorityClasses().Get(ctx, spec.PriorityClassName, metav1.GetOptions{}); err != nil {
		t.Errorf("priority class %s: %v", spec.PriorityClassName, err)
	}
	if spec.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("node selector %v, want kubernetes.io/os=linux", spec.NodeSelector)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want one that tolerates every taint", spec.Tolerations)
	}
	if !strings.HasPrefix(c.Image, "ghcr.io/weftnet/weft:") {
		t.Errorf("image %q", c.Image)
	}
	sc := c.SecurityContext
	if sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("security context %+v", sc)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
		c.ReadinessProbe.HTTPGet.Port.IntValue() != 6782 {
		t.Errorf("probes: readiness %+v liveness %+v", c.ReadinessProbe, c.LivenessProbe)
	}
	if !slices.Contains(c.Args, "--install-cni") {
		t.Errorf("args %v lack --install-cni", c.Args)
	}
	var hasNodeName bool
	for _, e := range c.Env {
		hasNodeName = hasNodeName || (e.Name == "WEFT_NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
	}
	if !hasNodeName {
		t.Errorf("env %+v lacks WEFT_NODE_NAME from spec.nodeName", c.Env)
	}
	// The daemon listens on the Node's address, where the kubelet probes
	// a hostNetwork pod, not on whatever holds the default route.
	var hasListen bool
	for _, e := range c.Env {
		hasListen = hasListen || (e.Name == "WEFT_LISTEN" && e.ValueFrom != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP")
	}
	if !hasListen {
		t.Errorf("env %+v lacks WEFT_LISTEN from status.hostIP", c.Env)
	}
	paths := map[string]bool{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			paths[v.HostPath.Path] = true
		}
	}
	for _, p := range []string{"/opt/cni/bin", "/etc/cni/net.d", "/var/lib/weft", "/run/weft", "/var/run/wireguard", "/dev/net/tun"} {
		if !paths[p] {
			t.Errorf("no hostPath volume %s", p)
		}
	}
	if ds.Spec.UpdateStrategy.Type != "RollingUpdate" || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("update strategy %v, resources %+v", ds.Spec.UpdateStrategy.Type, c.Resources)
	}
}

// apiAccess is an API with admin rights: a *kubelab.Cluster, or one
// running in another process.
type apiAccess interface {
	RESTConfig() *rest.Config
	Clientset() kubernetes.Interface
}

// serverSideApply applies obj as `kubectl apply --server-side` does: an
// apply patch with a field manager, conflicts forced, and strict field
// validation, so a misspelt or misplaced field is an error, not a warning.
func serverSideApply(ctx context.Context, ri dynamic.ResourceInterface, obj *unstructured.Unstructured) error {
	data, err := obj.MarshalJSON()
	if err != nil {
		return err
	}
	force := true
	_, err = ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: "weft-test", Force: &force, FieldValidation: "Strict"})
	return err
}

func dynamicClient(t *testing.T, lab apiAccess) (*dynamic.DynamicClient, meta.RESTMapper) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(lab.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return dyn, restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(lab.Clientset().Discovery()))
}

// resourceFor is the dynamic client of obj's resource (and namespace).
func resourceFor(t *testing.T, dyn *dynamic.DynamicClient, mapper meta.RESTMapper, obj *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	gvk := obj.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("%s: %v", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	return dyn.Resource(m.Resource)
}

// rbacCheck is one question to the authorizer.
type rbacCheck struct {
	verb, group, resource, sub, ns, name string
	allowed                              bool
}

// checkRBAC asks, as the weft ServiceAccount, for every verb the daemon
// uses (allowed) and for neighbours it must not have (denied).
func checkRBAC(t *testing.T, ctx context.Context, sa kubernetes.Interface) {
	t.Helper()
	const ks, ws = "kube-system", kube.LeaseNamespace
	var checks []rbacCheck
	for _, v := range []string{"get", "list", "watch", "patch"} {
		checks = append(checks, rbacCheck{v, "", "nodes", "", "", "", true})
	}
	checks = append(checks, rbacCheck{"patch", "", "nodes", "status", "", "node-0", true})
	for _, v := range []string{"get", "list", "watch"} {
		checks = append(checks,
			rbacCheck{v, "", "pods", "", "", "", true},
			rbacCheck{v, "", "pods", "", "default", "", true},
			rbacCheck{v, "", "namespaces", "", "", "", true},
			rbacCheck{v, "networking.k8s.io", "networkpolicies", "", "", "", true},
		)
	}
	checks = append(checks,
		rbacCheck{"get", "", "secrets", "", ks, "weft", true},
		rbacCheck{"list", "", "secrets", "", ks, "weft", true},
		rbacCheck{"watch", "", "secrets", "", ks, "weft", true},
		rbacCheck{"create", "", "secrets", "", ks, "", true},
		rbacCheck{"get", "", "configmaps", "", ks, "weft-ipam-genesis", true},
		rbacCheck{"create", "", "configmaps", "", ks, "", true},
		rbacCheck{"create", "coordination.k8s.io", "leases", "", ws, "", true},
		rbacCheck{"get", "coordination.k8s.io", "leases", "", ws, "weft-reclaim-x", true},
		rbacCheck{"list", "coordination.k8s.io", "leases", "", ws, "", true},
		rbacCheck{"delete", "coordination.k8s.io", "leases", "", ws, "weft-reclaim-x", true},

		// What it must not do.
		rbacCheck{"delete", "", "nodes", "", "", "node-0", false},
		rbacCheck{"create", "", "nodes", "", "", "", false},
		rbacCheck{"update", "", "nodes", "", "", "node-0", false},
		rbacCheck{"update", "", "nodes", "status", "", "node-0", false},
		rbacCheck{"get", "", "secrets", "", "default", "weft", false},
		rbacCheck{"get", "", "secrets", "", ks, "other", false},
		rbacCheck{"list", "", "secrets", "", ks, "", false},
		rbacCheck{"list", "", "secrets", "", "", "", false},
		rbacCheck{"create", "", "secrets", "", "default", "", false},
		rbacCheck{"update", "", "secrets", "", ks, "weft", false},
		rbacCheck{"delete", "", "secrets", "", ks, "weft", false},
		rbacCheck{"get", "", "configmaps", "", ks, "other", false},
		rbacCheck{"update", "", "configmaps", "", ks, "weft-ipam-genesis", false},
		rbacCheck{"create", "", "configmaps", "", "default", "", false},
		rbacCheck{"create", "coordination.k8s.io", "leases", "", "default", "", false},
		rbacCheck{"update", "coordination.k8s.io", "leases", "", ws, "weft-reclaim-x", false},
		rbacCheck{"patch", "coordination.k8s.io", "leases", "", ws, "weft-reclaim-x", false},
		rbacCheck{"create", "", "secrets", "", ws, "", false},
		rbacCheck{"create", "", "configmaps", "", ws, "", false},
		rbacCheck{"create", "", "pods", "", "default", "", false},
		rbacCheck{"delete", "", "pods", "", "default", "x", false},
		rbacCheck{"create", "", "pods", "exec", "default", "x", false},
		rbacCheck{"create", "", "serviceaccounts", "token", ks, "weft", false},
		rbacCheck{"create", "networking.k8s.io", "networkpolicies", "", "default", "", false},
		rbacCheck{"update", "apps", "daemonsets", "", ks, "weft", false},
		rbacCheck{"escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", "weft", false},
	)
	// Nothing that is not weft's can be deleted or changed: the Leases of
	// leader election and of node heartbeats, other Secrets and
	// ConfigMaps, in kube-system and elsewhere. (weft's own Secret and
	// ConfigMap it cannot delete either; its claims it can, in its own
	// namespace only.)
	for _, o := range notWefts {
		for _, v := range []string{"delete", "update", "patch", "deletecollection"} {
			name := o.name
			if v == "deletecollection" {
				name = ""
			}
			checks = append(checks, rbacCheck{v, o.group, o.resource, "", o.ns, name, false})
		}
	}
	for _, ns := range []string{ks, "default", "kube-node-lease", "kube-public"} {
		checks = append(checks,
			rbacCheck{"create", "coordination.k8s.io", "leases", "", ns, "", false},
			rbacCheck{"get", "coordination.k8s.io", "leases", "", ns, "kube-scheduler", false},
			rbacCheck{"list", "coordination.k8s.io", "leases", "", ns, "", false},
		)
	}
	for _, c := range checks {
		review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: c.verb, Group: c.group, Resource: c.resource, Subresource: c.sub, Namespace: c.ns, Name: c.name,
			},
		}}
		got, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectAccessReview: %v", err)
		}
		if got.Status.Allowed != c.allowed {
			t.Errorf("can-i %s %s%s (group %q, namespace %q, name %q) = %v, want %v (%s)",
				c.verb, c.resource, subSuffix(c.sub), c.group, c.ns, c.name, got.Status.Allowed, c.allowed, got.Status.Reason)
		}
	}
	// And a real request, refused.
	err := sa.CoreV1().Nodes().Delete(ctx, "node-0", metav1.DeleteOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("delete node as weft: %v, want Forbidden", err)
	}
}

// notWeft is an object weft must not delete or change.
type notWeft struct{ group, resource, ns, name string }

var notWefts = []notWeft{
	{"coordination.k8s.io", "leases", "kube-system", "kube-scheduler"},
	{"coordination.k8s.io", "leases", "kube-system", "kube-controller-manager"},
	{"coordination.k8s.io", "leases", "kube-system", "weft-reclaim-x"}, // a claim of an older release
	{"coordination.k8s.io", "leases", "kube-node-lease", "node-0"},
	{"coordination.k8s.io", "leases", "default", "app-leader"},
	{"", "secrets", "kube-system", "bootstrap-token-abcdef"},
	{"", "secrets", "kube-system", "weft"}, // weft's, but never deleted by it
	{"", "secrets", "default", "db-password"},
	{"", "secrets", kube.LeaseNamespace, "planted"},
	{"", "configmaps", "kube-system", "kube-proxy"},
	{"", "configmaps", "kube-system", "coredns"},
	{"", "configmaps", "kube-system", "weft-ipam-genesis"},
	{"", "configmaps", "default", "app-config"},
}

// checkCannotDelete makes real objects that are not weft's (as an admin)
// and tries, as the weft ServiceAccount, to delete each and to change its
// labels: every request is Forbidden and every object is still there.
func checkCannotDelete(t *testing.T, ctx context.Context, admin, sa kubernetes.Interface) {
	t.Helper()
	for _, ns := range []string{"kube-node-lease", kube.LeaseNamespace} {
		_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	patch := []byte(`{"metadata":{"labels":{"weft-was-here":"yes"}}}`)
	for _, o := range notWefts {
		if o.name == "weft" || o.name == "weft-ipam-genesis" {
			continue // made by the daemons' subtests below
		}
		meta := metav1.ObjectMeta{Namespace: o.ns, Name: o.name}
		var create, del, change, get func() error
		switch o.resource {
		case "leases":
			c := admin.CoordinationV1().Leases(o.ns)
			create = func() error {
				_, err := c.Create(ctx, &coordinationv1.Lease{ObjectMeta: meta}, metav1.CreateOptions{})
				return err
			}
			get = func() error { _, err := c.Get(ctx, o.name, metav1.GetOptions{}); return err }
			del = func() error { return sa.CoordinationV1().Leases(o.ns).Delete(ctx, o.name, metav1.DeleteOptions{}) }
			change = func() error {
				_, err := sa.CoordinationV1().Leases(o.ns).Patch(ctx, o.name, types.MergePatchType, patch, metav1.PatchOptions{})
				return err
			}
		case "secrets":
			c := admin.CoreV1().Secrets(o.ns)
			create = func() error {
				_, err := c.Create(ctx, &corev1.Secret{ObjectMeta: meta}, metav1.CreateOptions{})
				return err
			}
			get = func() error { _, err := c.Get(ctx, o.name, metav1.GetOptions{}); return err }
			del = func() error { return sa.CoreV1().Secrets(o.ns).Delete(ctx, o.name, metav1.DeleteOptions{}) }
			change = func() error {
				_, err := sa.CoreV1().Secrets(o.ns).Patch(ctx, o.name, types.MergePatchType, patch, metav1.PatchOptions{})
				return err
			}
		case "configmaps":
			c := admin.CoreV1().ConfigMaps(o.ns)
			create = func() error {
				_, err := c.Create(ctx, &corev1.ConfigMap{ObjectMeta: meta}, metav1.CreateOptions{})
				return err
			}
			get = func() error { _, err := c.Get(ctx, o.name, metav1.GetOptions{}); return err }
			del = func() error { return sa.CoreV1().ConfigMaps(o.ns).Delete(ctx, o.name, metav1.DeleteOptions{}) }
			change = func() error {
				_, err := sa.CoreV1().ConfigMaps(o.ns).Patch(ctx, o.name, types.MergePatchType, patch, metav1.PatchOptions{})
				return err
			}
		}
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create %s %s/%s: %v", o.resource, o.ns, o.name, err)
		}
		if err := del(); !apierrors.IsForbidden(err) {
			t.Errorf("delete %s %s/%s as weft: %v, want Forbidden", o.resource, o.ns, o.name, err)
		}
		if err := change(); !apierrors.IsForbidden(err) {
			t.Errorf("patch %s %s/%s as weft: %v, want Forbidden", o.resource, o.ns, o.name, err)
		}
		if err := get(); err != nil {
			t.Errorf("%s %s/%s after weft's attempts: %v", o.resource, o.ns, o.name, err)
		}
	}
}

func subSuffix(sub string) string {
	if sub == "" {
		return ""
	}
	return "/" + sub
}

// TestKustomization checks deploy/kustomization.yaml names the manifest,
// so `kubectl apply -k deploy/` installs what `-f deploy/weft.yaml` does.
func TestKustomization(t *testing.T) {
	data, err := os.ReadFile("../deploy/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Kind      string   `json:"kind"`
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	if k.Kind != "Kustomization" || !slices.Equal(k.Resources, []string{"weft.yaml"}) {
		t.Errorf("kustomization %+v, want kind Kustomization with resources [weft.yaml]", k)
	}
}
