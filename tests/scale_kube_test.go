package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	"github.com/weftnet/weft/netlab"
)

// Sizes of TestDaemonMemoryManyPods: a large cluster as one daemon sees it.
const (
	scalePods       = 5000
	scalePolicies   = 1000
	scaleNamespaces = 50
	// What the daemon may hold with that cluster in its caches: it held
	// 122 MB of heap in use and 193-210 MB resident before its informers
	// kept only what policy reads and it returned the first sync's
	// garbage; after, 89-97 MB in use, of which the last collection found
	// 76 MB live, and 127-138 MB resident. The heap bound is on the live
	// heap: the heap in use also counts garbage of a later compile, which
	// stays until the next collection.
	scaleMaxHeap = 95 << 20
	scaleMaxRSS  = 170 << 20
)

// TestDaemonMemoryManyPods: a daemon watching a cluster of 5,000 Pods (as
// a kubelet writes them: containers with images, environment, probes; a
// status with conditions) and 1,000 NetworkPolicies in a real
// kube-apiserver compiles them and keeps its heap and resident set under scaleMaxHeap
// and scaleMaxRSS. It
// reports the daemon's memory (BENCHMARKS.md). WEFT_SCALE_PODS overrides
// the number of pods.
func TestDaemonMemoryManyPods(t *testing.T) {
	errorf := errorfLast(t)
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	pods := scalePods
	if s := os.Getenv("WEFT_SCALE_PODS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("WEFT_SCALE_PODS=%q: want a number of pods", s)
		}
		pods = n
	}
	cp, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	kapi := startKubelabHelper(t, ctx, cp.Netns, cp.Addr)
	node, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	applyObjects(t, ctx, kapi, readManifest(t, manifestPath))
	cfg := kapi.RESTConfig()
	cfg.QPS, cfg.Burst = 5000, 5000
	cfg.WarningHandler = rest.NoWarnings{}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := registerNode(ctx, client, node.Name, node.Addr); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if err := createScaleCluster(ctx, client, node.Name, pods); err != nil {
		t.Fatal(err)
	}
	t.Logf("created %d pods and %d policies in %d namespaces in %v", pods, scalePolicies, scaleNamespaces, time.Since(start).Round(time.Millisecond))

	localPods, localPolicies := scaleLocal(pods)
	startAll(t, ctx, []*netlab.Node{node}, func(*netlab.Node) []string {
		return []string{"--kubeconfig", kapi.saKubeconfig, "--secret-file", "", "--wg-mode", "userspace", "--metrics-addr", "127.0.0.1:6782", "--log-level", "info"}
	})
	start = time.Now()
	poll(t, ctx, func() error {
		st, err := policyStatus(ctx, node)
		if err != nil {
			return err
		}
		// Status lists the local pods and the policies that select them.
		if !st.Enforcing || len(st.Policies) != localPolicies || len(st.Pods) != localPods {
			return fmt.Errorf("enforcing %v with %d policies for %d local pods, want %d for %d",
				st.Enforcing, len(st.Policies), len(st.Pods), localPolicies, localPods)
		}
		return nil
	})
	t.Logf("daemon enforcing the %d policies of its %d pods %v after start", localPolicies, localPods, time.Since(start).Round(time.Millisecond))

	// Memory once the caches are full: the resident set's largest sample
	// of ten, a second apart, and the heap the last collection found live
	// (the heap in use also counts garbage left since then, which an idle
	// daemon keeps until the runtime's next collection, up to 2 minutes).
	var rss, live, inuse int64
	for range 10 {
		r, err := processRSS(node.DaemonPID())
		if err != nil {
			t.Fatal(err)
		}
		rss = max(rss, r)
		l, err := scrapeGauge(ctx, node, "go_gc_heap_live_bytes")
		if err != nil {
			t.Fatal(err)
		}
		live = max(live, l)
		h, err := scrapeGauge(ctx, node, "go_memstats_heap_inuse_bytes")
		if err != nil {
			t.Fatal(err)
		}
		if inuse == 0 || h < inuse {
			inuse = h
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(time.Second):
		}
	}
	t.Logf("daemon with %d pods and %d policies in the API: RSS %.1f MB, Go heap live %.1f MB, in use %.1f MB",
		pods, scalePolicies, float64(rss)/(1<<20), float64(live)/(1<<20), float64(inuse)/(1<<20))
	if pods == scalePods && live > scaleMaxHeap {
		errorf("daemon heap live %.1f MB, want at most %.0f MB", float64(live)/(1<<20), float64(scaleMaxHeap)/(1<<20))
	}
	if pods == scalePods && rss > scaleMaxRSS {
		errorf("daemon RSS %.1f MB, want at most %.0f MB", float64(rss)/(1<<20), float64(scaleMaxRSS)/(1<<20))
	}
}

// errorfLast returns a t.Errorf that also repeats its message at the very
// end of the test's output, after the daemon logs a failing lab prints
// (call it before newLab: cleanups run last-registered first).
func errorfLast(t *testing.T) func(format string, args ...any) {
	var msgs []string
	t.Cleanup(func() {
		for _, m := range msgs {
			t.Log("failed: " + m)
		}
	})
	return func(format string, args ...any) {
		t.Helper()
		msgs = append(msgs, fmt.Sprintf(format, args...))
		t.Errorf(format, args...)
	}
}

// scrapeGauge reads one unlabelled metric of the daemon of n on loopback.
func scrapeGauge(ctx context.Context, n *netlab.Node, name string) (int64, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return n.Dial(ctx, network, addr) },
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:6782/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f), err
		}
	}
	return 0, fmt.Errorf("no %s in /metrics", name)
}

// scaleLocal counts the pods createScalePod puts on the daemon's node and
// the policies (scalePolicy) that select at least one of them.
func scaleLocal(pods int) (localPods, localPolicies int) {
	apps := map[string]bool{} // namespace/app of local pods
	for i := 0; i < pods; i += 50 {
		localPods++
		apps[fmt.Sprintf("scale-%d/app-%d", i%scaleNamespaces, i%200)] = true
	}
	for i := range scalePolicies {
		if apps[fmt.Sprintf("scale-%d/app-%d", i%scaleNamespaces, i%200)] {
			localPolicies++
		}
	}
	return localPods, localPolicies
}

// createScaleCluster writes namespaces, pods (with the status a kubelet
// writes) and policies, many at a time.
func createScaleCluster(ctx context.Context, client kubernetes.Interface, nodeName string, pods int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range scaleNamespaces {
		g.Go(func() error {
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-%d", i),
				Labels: map[string]string{"team": fmt.Sprintf("team-%d", i%10), "env": []string{"prod", "dev"}[i%2]}}}
			_, err := client.CoreV1().Namespaces().Create(gctx, ns, metav1.CreateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("create namespaces: %w", err)
	}
	var made atomic.Int64
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range pods {
		g.Go(func() error {
			if err := createScalePod(gctx, client, nodeName, i); err != nil {
				return err
			}
			made.Add(1)
			return nil
		})
	}
	for i := range scalePolicies {
		g.Go(func() error {
			return retry.OnError(scaleBackoff, transient, func() error {
				_, err := client.NetworkingV1().NetworkPolicies(fmt.Sprintf("scale-%d", i%scaleNamespaces)).Create(gctx, scalePolicy(i), metav1.CreateOptions{})
				if apierrors.IsAlreadyExists(err) {
					return nil // created by an attempt whose answer was lost
				}
				return err
			})
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("after %d pods: %w", made.Load(), err)
	}
	return nil
}

// createScalePod creates pod i the way a Deployment's pod looks once its
// kubelet has run it; one pod in 50 runs on nodeName, the rest elsewhere.
func createScalePod(ctx context.Context, client kubernetes.Interface, nodeName string, i int) error {
	ns := fmt.Sprintf("scale-%d", i%scaleNamespaces)
	app := fmt.Sprintf("app-%d", i%200)
	node := fmt.Sprintf("elsewhere-%d", i%100)
	if i%50 == 0 {
		node = nodeName
	}
	env := make([]corev1.EnvVar, 12)
	for j := range env {
		env[j] = corev1.EnvVar{Name: fmt.Sprintf("SETTING_%d", j), Value: strings.Repeat("v", 24)}
	}
	probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}, PeriodSeconds: 10}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%08x", app, i),
			Labels:      map[string]string{"app": app, "tier": []string{"web", "api", "db"}[i%3], "pod-template-hash": fmt.Sprintf("%08x", i%997)},
			Annotations: map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z", "prometheus.io/scrape": "true"},
		},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{
				{Name: "app", Image: "registry.example/team/" + app + ":v1.2.3", Command: []string{"/app", "--config=/etc/app/config.yaml"}, Env: env,
					Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}},
					LivenessProbe:  probe,
					ReadinessProbe: probe,
					VolumeMounts:   []corev1.VolumeMount{{Name: "config", MountPath: "/etc/app"}}},
				{Name: "proxy", Image: "registry.example/proxy:v2", Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 15001}}},
			},
			Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: app}}}}},
		},
	}
	// A busy API server drops a connection now and then: try again, and
	// take a pod a lost answer had created.
	var created *corev1.Pod
	err := retry.OnError(scaleBackoff, transient, func() error {
		var err error
		created, err = client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			created, err = client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", ns, pod.Name, err)
	}
	now := metav1.Now()
	ip := fmt.Sprintf("10.%d.%d.%d", 32+i>>16, (i>>8)&0xff, i&0xff)
	created.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: "172.30.9.9", StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{
			{Name: "app", Ready: true, Image: "registry.example/team/" + app + ":v1.2.3", ImageID: "registry.example/team/" + app + "@sha256:" + strings.Repeat("ab", 32), ContainerID: "containerd://" + strings.Repeat("cd", 32)},
			{Name: "proxy", Ready: true, Image: "registry.example/proxy:v2", ImageID: "registry.example/proxy@sha256:" + strings.Repeat("ef", 32), ContainerID: "containerd://" + strings.Repeat("01", 32)},
		},
	}
	err = retry.OnError(scaleBackoff, transient, func() error {
		_, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("write status of pod %s/%s: %w", ns, pod.Name, err)
	}
	return nil
}

// scaleBackoff retries a write the API server's connection lost.
var scaleBackoff = wait.Backoff{Steps: 5, Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.1}

// transient says whether err is a lost connection or an overloaded API
// server rather than an answer to the request.
func transient(err error) bool {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return apierrors.IsServerTimeout(err) || apierrors.IsTooManyRequests(err) || apierrors.IsTimeout(err)
	}
	return err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// scalePolicy i selects one app and admits its tier's clients from the
// namespaces of one team, on a named port.
func scalePolicy(i int) *networkingv1.NetworkPolicy {
	port := intstr.FromString("http")
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("allow-%d", i)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%200)}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%d", i%10)}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"tier": []string{"web", "api"}[i%2]}},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
			}},
		},
	}
}

// processRSS reads a process's resident set size in bytes.
func processRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %q: %w", line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
