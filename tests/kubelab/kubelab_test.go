package kubelab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestCluster(t *testing.T) {
	began := time.Now()
	c := StartForTest(t, Config{})
	t.Logf("etcd and kube-apiserver ready in %v at %s", time.Since(began).Round(time.Millisecond), c.Server())
	ctx := t.Context()
	cs := c.Clientset()

	t.Run("readyz and version", func(t *testing.T) {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil || string(body) != "ok" {
			t.Fatalf("/readyz = %q, %v; want ok", body, err)
		}
		v, err := cs.Discovery().ServerVersion()
		if err != nil {
			t.Fatalf("/version: %v", err)
		}
		if v.Major != "1" || !strings.HasPrefix(v.GitVersion, "v1.") {
			t.Errorf("/version = %+v; want a v1.x release (built with make kube-apiserver?)", v)
		}
		t.Logf("kube-apiserver %s", v.GitVersion)
	})

	t.Run("node and pod", func(t *testing.T) {
		nodeIP := netip.MustParseAddr("192.0.2.11")
		podIP := netip.MustParseAddr("10.32.0.5")
		if err := c.CreateNode(ctx, "node-a", nodeIP); err != nil {
			t.Fatal(err)
		}
		node, err := cs.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := internalIP(node); got != nodeIP.String() {
			t.Errorf("node InternalIP = %q, want %s", got, nodeIP)
		}
		if !nodeReady(node) {
			t.Errorf("node conditions = %+v, want Ready", node.Status.Conditions)
		}

		ports := []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}
		if _, err := c.CreatePod(ctx, PodSpec{Namespace: "lab", Name: "web", NodeName: "node-a", Labels: map[string]string{"app": "web"}, Ports: ports}); err != nil {
			t.Fatal(err)
		}
		if err := c.SetPodIPs(ctx, "lab", "web", podIP); err != nil {
			t.Fatal(err)
		}
		pod, err := cs.CoreV1().Pods("lab").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pod.Spec.NodeName != "node-a" || pod.Labels["app"] != "web" || pod.Spec.Containers[0].Ports[0].ContainerPort != 8080 {
			t.Errorf("pod spec = %+v, labels %v", pod.Spec, pod.Labels)
		}
		st := pod.Status
		if st.Phase != corev1.PodRunning || st.PodIP != podIP.String() || len(st.PodIPs) != 1 || st.HostIP != nodeIP.String() {
			t.Errorf("pod status: phase %s podIP %q podIPs %v hostIP %q; want Running %s [%s] %s", st.Phase, st.PodIP, st.PodIPs, st.HostIP, podIP, podIP, nodeIP)
		}

		if err := c.DeletePod(ctx, "lab", "web"); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().Pods("lab").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("pod after DeletePod: %v, want NotFound", err)
		}
		if err := c.DeleteNode(ctx, "node-a"); err != nil {
			t.Fatal(err)
		}
		if err := c.DeletePod(ctx, "lab", "web"); err != nil {
			t.Errorf("second DeletePod: %v, want nil", err)
		}
	})

	t.Run("rbac", func(t *testing.T) {
		nobody, err := c.RESTConfigFor("nobody", nil)
		if err != nil {
			t.Fatal(err)
		}
		ncs := kubernetes.NewForConfigOrDie(nobody)
		if _, err := ncs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list pods as nobody: %v, want Forbidden", err)
		}
		cases := []struct {
			name string
			cs   kubernetes.Interface
			want bool
		}{
			{"admin", cs, true},
			{"nobody", ncs, false},
		}
		for _, tc := range cases {
			review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods"},
			}}
			got, err := tc.cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("%s: SelfSubjectAccessReview: %v", tc.name, err)
			}
			if got.Status.Allowed != tc.want {
				t.Errorf("%s may list pods: %v, want %v", tc.name, got.Status.Allowed, tc.want)
			}
		}
	})

	t.Run("service account identity", func(t *testing.T) {
		const user = "system:serviceaccount:kube-system:weft"
		path, err := c.KubeconfigFor(user, []string{"system:serviceaccounts", "system:serviceaccounts:kube-system"})
		if err != nil {
			t.Fatal(err)
		}
		restCfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			t.Fatal(err)
		}
		sa := kubernetes.NewForConfigOrDie(restCfg)
		if _, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("list nodes before the binding: %v, want Forbidden", err)
		}
		role := &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "node-reader"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}}},
		}
		if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "weft-node-reader"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "node-reader"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "kube-system", Name: "weft"}},
		}
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// RBAC's authorizer reads bindings from an informer: poll.
		err = eventually(ctx, func() error {
			_, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return err
		})
		if err != nil {
			t.Errorf("list nodes as the ServiceAccount after the binding: %v", err)
		}
		again, err := c.KubeconfigFor(user, []string{"system:serviceaccounts:kube-system", "system:serviceaccounts"})
		if err != nil || again != path {
			t.Errorf("second KubeconfigFor = %q, %v; want %q", again, err, path)
		}
	})

	t.Run("service account token", func(t *testing.T) {
		token, err := c.ServiceAccountToken(ctx, "kube-system", "weft")
		if err != nil {
			t.Fatal(err)
		}
		cfg := c.RESTConfig()
		cfg.CertData, cfg.KeyData, cfg.BearerToken = nil, nil, token
		review := &authenticationv1.SelfSubjectReview{}
		got, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectReview with the token: %v", err)
		}
		if want := "system:serviceaccount:kube-system:weft"; got.Status.UserInfo.Username != want {
			t.Errorf("token authenticates as %q, want %q", got.Status.UserInfo.Username, want)
		}
	})

	t.Run("admin kubeconfig", func(t *testing.T) {
		restCfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath())
		if err != nil {
			t.Fatal(err)
		}
		if restCfg.Host != c.Server() {
			t.Errorf("kubeconfig server = %q, want %q", restCfg.Host, c.Server())
		}
		if _, err := kubernetes.NewForConfigOrDie(restCfg).CoreV1().Namespaces().Get(ctx, "lab", metav1.GetOptions{}); err != nil {
			t.Errorf("get namespace with the admin kubeconfig: %v", err)
		}
	})

	t.Run("close", func(t *testing.T) {
		checkClose(t, c)
	})
}

// checkClose closes c and checks that no server process and no directory
// of it remains, and that a second Close is harmless.
func checkClose(t *testing.T, c *Cluster) {
	t.Helper()
	pids := []int{c.etcd.cmd.Process.Pid, c.apiserver.cmd.Process.Pid}
	dirs := []string{c.dir, c.etcdDir}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d after Close: kill 0 = %v, want ESRCH", pid, err)
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Close: %v, want it gone", d, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	path := tempNetns(t)
	bind := netip.MustParseAddr("198.51.100.1")
	err := inNetns(path, func() error {
		// A veth pair with both ends here: this kernel may lack dummy.
		link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lab0"}, PeerName: "lab1"}
		if err := netlink.LinkAdd(link); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		addr, err := netlink.ParseAddr(bind.String() + "/24")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("address veth: %w", err)
		}
		peer, err := netlink.LinkByName("lab1")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
		return netlink.LinkSetUp(link)
	})
	if err != nil {
		t.Fatalf("address the namespace: %v", err)
	}

	began := time.Now()
	c := StartForTest(t, Config{Netns: path, BindAddr: bind})
	t.Logf("ready in %v at %s inside %s", time.Since(began).Round(time.Millisecond), c.Server(), path)
	ctx := t.Context()

	if want := "https://" + bind.String() + ":"; !strings.HasPrefix(c.Server(), want) {
		t.Errorf("Server() = %q, want %s...", c.Server(), want)
	}
	for _, p := range []*process{c.etcd, c.apiserver} {
		if !sameFile(t, fmt.Sprintf("/proc/%d/ns/net", p.cmd.Process.Pid), path) {
			t.Errorf("%s does not run in %s", p.name, path)
		}
	}
	if err := c.CreateNode(ctx, "node-b", bind); err != nil {
		t.Fatalf("CreateNode through the namespace: %v", err)
	}
	// The kubeconfig is for a daemon inside the namespace; give its client
	// the same namespace.
	restCfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath())
	if err != nil {
		t.Fatal(err)
	}
	restCfg.Dial = netnsDialer(path)
	nodes, err := kubernetes.NewForConfigOrDie(restCfg).CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 {
		t.Fatalf("list nodes with the kubeconfig inside the namespace: %v, %v", nodes, err)
	}
	checkClose(t, c)
}

// tempNetns makes a named network namespace for the test and removes it
// when the test ends.
func tempNetns(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("kubelab-test-%d", os.Getpid())
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- err
			return
		}
		h.Close()
		if err := netns.Set(orig); err != nil {
			errc <- err // the thread stays locked and dies with the goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create network namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	return "/run/netns/" + name
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(fa, fb)
}

func eventually(ctx context.Context, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-tick.C:
		}
	}
}

func internalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func TestStartErrors(t *testing.T) {
	if _, err := Start(t.Context(), Config{APIServerBinary: "/nonexistent/kube-apiserver"}); !errors.Is(err, ErrMissingBinary) {
		t.Errorf("Start without kube-apiserver: %v, want ErrMissingBinary", err)
	}
	cfg, err := Config{}.withDefaults()
	if err != nil {
		t.Skipf("no Kubernetes API for this test: %v", err)
	}
	cfg.APIServerArgs = []string{"--no-such-flag"}
	_, err = Start(t.Context(), cfg)
	if err == nil {
		t.Fatal("Start with a bad kube-apiserver flag succeeded")
	}
	// The error says that the apiserver died and shows why.
	for _, want := range []string{"kube-apiserver exited", "no-such-flag"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start error lacks %q:\n%v", want, err)
		}
	}
}

func TestOwnerGone(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	cases := []struct {
		name string
		want bool
	}{
		{"kubelab-" + self + "-123", false},
		{"kubelab-etcd-" + self + "-123", false},
		{"kubelab-2147483646-123", true},
		{"kubelab-etcd-2147483646-123", true},
		{"kubelab-123456789", false},
		{"kubelab-probe-1", false},
		{"kubelab--1", false},
	}
	for _, tc := range cases {
		if got := ownerGone(tc.name); got != tc.want {
			t.Errorf("ownerGone(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
