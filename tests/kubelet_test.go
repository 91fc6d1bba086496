package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/netlab"
	"github.com/weftnet/weft/tests/kubenode"
)

// nodeReadyWithin is how soon after its kubelet starts a Node must be Ready
// (issue 16).
const nodeReadyWithin = 60 * time.Second

// TestKubelet runs real kubelets and containerd (tests/kubenode) on lab
// nodes with weft as their pod network, and pods as Pod objects: first one
// node, then three. Nodes are Ready within a minute of their kubelet's
// start; pods are Running with distinct addresses from weft; every pod
// pings and GETs every other across nodes; deleted pods' addresses are
// released.
func TestKubelet(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	c := newKubeletCluster(t, ctx, 3)
	nodes, cs := c.nodes, c.cs
	// What each daemon holds before any pod (its own addresses).
	baseline := allocations(t, ctx, nodes)

	// One node: Ready, pods Running with addresses, talking to each other.
	c.startNode(t, ctx, nodes[0])
	c.waitReady(t, ctx, nodes[:1])
	one := runAgentPods(t, ctx, cs, nodes[:1], 2, "one")
	checkPodsTalk(t, ctx, one)

	// Three nodes, three pods each.
	for _, n := range nodes[1:] {
		c.startNode(t, ctx, n)
	}
	c.waitReady(t, ctx, nodes[1:])
	readySince := time.Now()
	pods := runAgentPods(t, ctx, cs, nodes, 3, "three")
	all := append(pods, one...)
	checkPodsTalk(t, ctx, all)

	// containerd asks weft-cni for STATUS every few seconds; a failing one
	// would make the Node NotReady. It stays Ready for two minutes.
	stayReady(t, ctx, cs, nodes, readySince, 2*time.Minute)

	// kill -9 of weft on a node: its pods keep their addresses, and once
	// it is back everything talks again.
	killed := nodes[1]
	before, err := ipamStatus(ctx, killed)
	if err != nil {
		t.Fatal(err)
	}
	if err := killed.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := killed.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := killed.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := ipamStatus(ctx, killed)
	if err != nil || after.Allocations != before.Allocations {
		t.Fatalf("%s holds %d addresses after kill -9 and restart (%v), %d before", killed.Name, after.Allocations, err, before.Allocations)
	}
	samePodIPs(t, ctx, cs, all)
	checkPodsTalk(t, ctx, all)

	// Deleted pods give their addresses back to weft.
	deletePods(t, ctx, cs, all)
	waitAllocations(t, ctx, nodes, baseline)
}

// allocations is how many addresses each node's daemon holds.
func allocations(t *testing.T, ctx context.Context, nodes []*netlab.Node) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, n := range nodes {
		st, err := ipamStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		out[n.Name] = st.Allocations
	}
	return out
}

// waitAllocations waits until each node's daemon holds as many addresses
// as in want, as before any pod once the pods are deleted.
func waitAllocations(t *testing.T, ctx context.Context, nodes []*netlab.Node, want map[string]int) {
	t.Helper()
	poll(t, ctx, func() error {
		for _, n := range nodes {
			st, err := ipamStatus(ctx, n)
			if err != nil {
				return err
			}
			if st.Allocations != want[n.Name] {
				return fmt.Errorf("%s holds %d addresses after its pods were deleted, %d before any pod", n.Name, st.Allocations, want[n.Name])
			}
		}
		return nil
	})
}

// kubeletCluster is lab nodes running weft daemons (seeded, with extra
// daemon flags) and, once startNode ran for them, real containerd and
// kubelets registered to a kube-apiserver on a node of its own.
type kubeletCluster struct {
	nodes []*netlab.Node
	cs    kubernetes.Interface
	kapi  *remoteAPI
	image string                    // the agent image, imported on every node
	kn    map[string]*kubenode.Node // by node name, once started
}

// newKubeletCluster starts count meshed daemons and the API; it skips the
// test when the kubelet or containerd is not built.
func newKubeletCluster(t *testing.T, ctx context.Context, count int, daemonArgs ...string) *kubeletCluster {
	t.Helper()
	if _, err := kubenode.FindBinaries(kubenode.Binaries{}); errors.Is(err, kubenode.ErrMissingBinary) {
		t.Skipf("no kubelet or containerd for this test: %v", err)
	}
	lab := newLab(t)
	if err := kubenode.CleanStale(); err != nil {
		t.Logf("clean what interrupted kubelet tests left: %v", err)
	}
	image, err := kubenode.BuildAgentImage(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cp, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := lab.AddNodes(0, count)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	kapi := startKubelabHelper(t, ctx, cp.Netns, cp.Addr, names...)
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return seedArgs(nodes[0], nodes, daemonArgs...) })
	waitMesh(t, ctx, nodes)
	return &kubeletCluster{nodes: nodes, cs: kapi.Clientset(), kapi: kapi, image: image, kn: map[string]*kubenode.Node{}}
}

// startNode starts containerd and the kubelet on n.
func (c *kubeletCluster) startNode(t *testing.T, ctx context.Context, n *netlab.Node) {
	t.Helper()
	began := time.Now()
	k, err := kubenode.Start(ctx, kubenode.Config{
		Node: n, Kubeconfig: c.kapi.nodeKubeconfigs[n.Name], WeftBinary: weftBinary, Images: []string{c.image},
	})
	if err != nil {
		t.Fatal(err)
	}
	c.kn[n.Name] = k
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s\n%s", k.KubeletLogTail(60), k.ContainerdLogTail(30))
		}
		if err := k.Close(); err != nil {
			t.Errorf("close kubenode %s: %v", n.Name, err)
		}
	})
	t.Logf("%s: containerd and kubelet started in %v", n.Name, time.Since(began).Round(time.Millisecond))
}

// waitReady waits until the Nodes of ns are Ready, at most nodeReadyWithin.
func (c *kubeletCluster) waitReady(t *testing.T, ctx context.Context, ns []*netlab.Node) {
	t.Helper()
	began := time.Now()
	rctx, cancel := context.WithTimeout(ctx, nodeReadyWithin)
	defer cancel()
	for _, n := range ns {
		if err := waitNodeReady(rctx, c.cs, n.Name); err != nil {
			t.Fatalf("node %s not Ready within %v of its kubelet's start: %v\n%s", n.Name, nodeReadyWithin, err, c.kn[n.Name].KubeletLogTail(40))
		}
	}
	t.Logf("nodes Ready %v after their kubelets started", time.Since(began).Round(time.Millisecond))
}

// agentPod is a Running pod of the agent image.
type agentPod struct {
	Name string
	Node *netlab.Node
	IP   netip.Addr
}

func waitNodeReady(ctx context.Context, cs kubernetes.Interface, name string) error {
	var last error
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		node, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil:
			last = err
		default:
			last = fmt.Errorf("no Ready condition yet")
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue {
						return nil
					}
					last = fmt.Errorf("Ready=%s: %s: %s", c.Status, c.Reason, c.Message)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// runAgentPods creates count agent pods on each node as Pod objects bound
// to it and waits until all are Running and Ready with an address, which
// must be distinct.
func runAgentPods(t *testing.T, ctx context.Context, cs kubernetes.Interface, nodes []*netlab.Node, count int, prefix string) []agentPod {
	t.Helper()
	var pods []agentPod
	for _, n := range nodes {
		for i := range count {
			name := fmt.Sprintf("%s-%s-%d", prefix, n.Name, i)
			if _, err := cs.CoreV1().Pods("default").Create(ctx, agentPodSpec(name, n.Name), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			pods = append(pods, agentPod{Name: name, Node: n})
		}
	}
	began := time.Now()
	seen := map[netip.Addr]string{}
	for i := range pods {
		p := &pods[i]
		poll(t, ctx, func() error {
			pod, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if pod.Status.Phase != corev1.PodRunning || !podReady(pod) || pod.Status.PodIP == "" {
				return fmt.Errorf("pod %s: phase %s, ready %v, IP %q, %s", p.Name, pod.Status.Phase, podReady(pod), pod.Status.PodIP, waitingReason(pod))
			}
			p.IP, err = netip.ParseAddr(pod.Status.PodIP)
			return err
		})
		if other, dup := seen[p.IP]; dup {
			t.Fatalf("pods %s and %s both have address %s", other, p.Name, p.IP)
		}
		seen[p.IP] = p.Name
	}
	t.Logf("%d pods Running and Ready in %v: %v", len(pods), time.Since(began).Round(time.Millisecond), seen)
	return pods
}

func agentPodSpec(name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "agent"}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			AutomountServiceAccountToken:  new(false),
			TerminationGracePeriodSeconds: new(int64(1)),
			Containers: []corev1.Container{{
				Name:            "agent",
				Image:           kubenode.AgentImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"serve"},
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: kubenode.AgentPort}},
				// The kubelet probes from the node: the node reaches its pod.
				ReadinessProbe: &corev1.Probe{
					ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/whoami", Port: intstr.FromInt32(kubenode.AgentPort)}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitingReason says why a pod's container does not run yet, if it says.
func waitingReason(pod *corev1.Pod) string {
	for _, s := range pod.Status.ContainerStatuses {
		if w := s.State.Waiting; w != nil {
			return w.Reason + ": " + w.Message
		}
	}
	for _, c := range pod.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			return string(c.Type) + ": " + c.Message
		}
	}
	return ""
}

// checkPodsTalk asks every pod's agent to ping and GET every other pod.
func checkPodsTalk(t *testing.T, ctx context.Context, pods []agentPod) {
	t.Helper()
	checkPodsTalkAt(t, ctx, pods, "", func(p agentPod) netip.Addr { return p.IP })
}

// checkPodsTalkAt is checkPodsTalk to the address addr gives of each pod
// (over says which, for the messages: " over IPv6").
func checkPodsTalkAt(t *testing.T, ctx context.Context, pods []agentPod, over string, addr func(agentPod) netip.Addr) {
	t.Helper()
	began := time.Now()
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			dst := addr(b)
			poll(t, ctx, func() error {
				if _, err := askAgent(ctx, a, "/ping?ip="+dst.String()); err != nil {
					return fmt.Errorf("ping %s (%s) -> %s (%s)%s: %w", a.Name, a.Node.Name, b.Name, b.Node.Name, over, err)
				}
				url := "http://" + net.JoinHostPort(dst.String(), strconv.Itoa(kubenode.AgentPort)) + "/whoami"
				body, err := askAgent(ctx, a, "/get?url="+url)
				if err != nil {
					return fmt.Errorf("GET %s (%s) -> %s (%s)%s: %w", a.Name, a.Node.Name, b.Name, b.Node.Name, over, err)
				}
				if want := b.Name + " "; len(body) < len(want) || body[:len(want)] != want {
					return fmt.Errorf("GET %s from %s answered %q, want %s's name", url, a.Name, body, b.Name)
				}
				return nil
			})
		}
	}
	t.Logf("%d pods: all pairs ping and GET each other%s (%v)", len(pods), over, time.Since(began).Round(time.Millisecond))
}

// stayReady checks every Node stays Ready, without a transition, until
// hold has passed since since.
func stayReady(t *testing.T, ctx context.Context, cs kubernetes.Interface, nodes []*netlab.Node, since time.Time, hold time.Duration) {
	t.Helper()
	transitions := map[string]time.Time{}
	for {
		for _, n := range nodes {
			node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ready := false
			for _, c := range node.Status.Conditions {
				if c.Type != corev1.NodeReady {
					continue
				}
				if c.Status != corev1.ConditionTrue {
					t.Fatalf("node %s became %s %v after Ready: %s: %s", n.Name, c.Status, time.Since(since).Round(time.Second), c.Reason, c.Message)
				}
				ready = true
				if first, ok := transitions[n.Name]; ok && !first.Equal(c.LastTransitionTime.Time) {
					t.Fatalf("node %s's Ready condition changed at %v", n.Name, c.LastTransitionTime)
				}
				transitions[n.Name] = c.LastTransitionTime.Time
			}
			if !ready {
				t.Fatalf("node %s lost its Ready condition", n.Name)
			}
		}
		if time.Since(since) >= hold {
			t.Logf("nodes stayed Ready for %v", time.Since(since).Round(time.Second))
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}

// samePodIPs checks the API still gives each pod the address it had.
func samePodIPs(t *testing.T, ctx context.Context, cs kubernetes.Interface, pods []agentPod) {
	t.Helper()
	for _, p := range pods {
		pod, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pod.Status.PodIP != p.IP.String() || pod.Status.Phase != corev1.PodRunning {
			t.Errorf("pod %s: %s with IP %q, was Running with %s", p.Name, pod.Status.Phase, pod.Status.PodIP, p.IP)
		}
	}
}

// askAgent GETs path of pod p's agent from p's node.
func askAgent(ctx context.Context, p agentPod, path string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: netnsDial(p.Node.Netns), DisableKeepAlives: true}}
	url := "http://" + net.JoinHostPort(p.IP.String(), strconv.Itoa(kubenode.AgentPort)) + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, body)
	}
	return string(body), nil
}

// deletePods deletes the pods gracefully, as a user would; the kubelet
// stops them, CNI DEL runs, and the kubelet removes the objects.
func deletePods(t *testing.T, ctx context.Context, cs kubernetes.Interface, pods []agentPod) {
	t.Helper()
	for _, p := range pods {
		if err := cs.CoreV1().Pods("default").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, ctx, func() error {
		for _, p := range pods {
			_, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
			if err == nil {
				return fmt.Errorf("pod %s still exists", p.Name)
			}
			if !apierrors.IsNotFound(err) {
				return err
			}
		}
		return nil
	})
}
