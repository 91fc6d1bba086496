package tests

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/netlab"
	"github.com/weftnet/weft/policy/policytest"
	"github.com/weftnet/weft/tests/kubelab"
)

// The upstream network-policy model: namespaces x, y, z with pods a, b, c
// each, every pod serving TCP and UDP on ports 80 and 81. Beyond the
// labels ns=<name> and pod=<name>, namespaces x and y carry team=blue and
// every pod b carries tier=backend, for the Exists and DoesNotExist cases;
// a second container's port alt-tcp is TCP 80 on pods a and b, 81 on c.
var (
	policyNamespaces = []string{"x", "y", "z"}
	policyPodNames   = []string{"a", "b", "c"}
	policyPorts      = []probePort{{corev1.ProtocolTCP, 80}, {corev1.ProtocolTCP, 81}, {corev1.ProtocolUDP, 80}, {corev1.ProtocolUDP, 81}}
)

// The pod range of the daemons (the default --pod-cidr).
const policyPodCIDR = "10.32.0.0/12"

// Probe timing: a probe that gets no answer within probeTimeout counts as
// denied; at most probeParallel run at once.
const (
	probeTimeout  = time.Second
	probeParallel = 48
)

// probePort is a protocol and port every pod serves.
type probePort struct {
	proto corev1.Protocol
	port  uint16
}

func (p probePort) String() string { return fmt.Sprintf("%s/%d", p.proto, p.port) }

// policyPod is one pod of the model: its API object and its netns.
type policyPod struct {
	ns, name string
	node     *netlab.Node
	netns    string
	ip       netip.Addr
	udpPorts atomic.Uint32 // source ports of UDP probes taken so far
}

// UDP probes leave from ports taken in turn from a range no other socket
// of the pod uses, so a probe never reuses the five-tuple of one still in
// conntrack (30 s), which would pass as established whatever the policy
// says now. A pod sends well under 100 UDP probes a second, so a port
// comes round again after more than 3 minutes.
const (
	udpProbePortBase  = 20000
	udpProbePortCount = 20000
)

// nextUDPPort is the source port of the pod's next UDP probe.
func (p *policyPod) nextUDPPort() int {
	return udpProbePortBase + int(p.udpPorts.Add(1)%udpProbePortCount)
}

func (p *policyPod) String() string { return p.ns + "/" + p.name }

// policyCluster is three nodes running weft daemons against a real
// kube-apiserver in the lab's underlay, with the nine pods of the model
// spread over them (each node holds one pod of each namespace, so some
// pairs talk within a node and most across).
type policyCluster struct {
	client kubernetes.Interface
	rest   *rest.Config // the client's config, for other API groups
	nodes  []*netlab.Node
	pods   []*policyPod // x/a, x/b, x/c, y/a, ...
	// cnp, once set (the ClusterNetworkPolicy CRD is installed), makes
	// the expected matrix include the ClusterNetworkPolicies.
	cnp cnpclient.Interface
}

// newPolicyCluster builds the cluster and waits until every pod reaches
// every other on every port.
func newPolicyCluster(t *testing.T, ctx context.Context) *policyCluster {
	t.Helper()
	lab := newLab(t)
	// The API runs in a lab node of its own with no daemon (see
	// startKubelabHelper): the nodes reach it over the underlay.
	cp, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	kapi := startKubelabHelper(t, ctx, cp.Netns, cp.Addr)
	nodes, err := lab.AddNodes(0, 3)
	if err != nil {
		t.Fatal(err)
	}
	applyObjects(t, ctx, kapi, readManifest(t, manifestPath))
	kubeconfig := kapi.saKubeconfig
	for _, n := range nodes {
		if err := registerNode(ctx, kapi.Clientset(), n.Name, n.Addr); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"--kubeconfig", kubeconfig, "--secret-file", "", "--wg-mode", "userspace",
		"--metrics-addr", "", "--log-level", "info"}
	startAll(t, ctx, nodes, func(*netlab.Node) []string { return args })
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s daemon log:\n%s", n.Name, n.LogTail(40))
			}
		}
	})
	waitMesh(t, ctx, nodes)

	// A client of our own: the probes' expectations read the API often,
	// and the pods' duplicate port 80 (see startPod) is meant.
	cfg := kapi.RESTConfig()
	cfg.QPS, cfg.Burst = 1000, 1000
	cfg.WarningHandler = rest.NoWarnings{}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &policyCluster{client: client, rest: cfg, nodes: nodes}
	for _, ns := range policyNamespaces {
		labels := map[string]string{"ns": ns}
		if ns != "z" {
			labels["team"] = "blue"
		}
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}
		if _, err := c.client.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i, ns := range policyNamespaces {
		for j, name := range policyPodNames {
			c.pods = append(c.pods, &policyPod{ns: ns, name: name, node: nodes[(i+j)%len(nodes)]})
		}
	}
	var g errgroup.Group
	for _, p := range c.pods {
		g.Go(func() error { return c.startPod(t, ctx, p) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	c.waitMatrix(t, ctx, "no policy")
	return c
}

// startPod plays the kubelet for one pod: the Pod object bound to its
// node, CNI ADD, the IP in the Pod's status, and its servers.
func (c *policyCluster) startPod(t *testing.T, ctx context.Context, p *policyPod) error {
	labels := map[string]string{"pod": p.name}
	if p.name == "b" {
		labels["tier"] = "backend"
	}
	var ports []corev1.ContainerPort
	for _, pp := range policyPorts {
		ports = append(ports, corev1.ContainerPort{
			Name:          fmt.Sprintf("serve-%d-%s", pp.port, strings.ToLower(string(pp.proto))),
			ContainerPort: int32(pp.port),
			Protocol:      pp.proto,
		})
	}
	// A name that means another number on pod c, for named ports
	// resolved per destination pod.
	altPort := corev1.ContainerPort{Name: "alt-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP}
	if p.name == "c" {
		altPort.ContainerPort = 81
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: p.node.Name,
			Containers: []corev1.Container{
				{Name: "pause", Image: kubelab.PauseImage, Ports: ports},
				{Name: "sidecar", Image: kubelab.PauseImage, Ports: []corev1.ContainerPort{altPort}},
			},
		},
	}
	pod, err := c.client.CoreV1().Pods(p.ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s: %w", p, err)
	}
	lp, err := p.node.AddPod(ctx, netlab.PodConfig{Namespace: p.ns, Name: p.name})
	if err != nil {
		return fmt.Errorf("CNI ADD of %s on %s: %w\ndaemon log:\n%s", p, p.node.Name, err, p.node.LogTail(30))
	}
	p.netns, p.ip = lp.Netns, lp.IP()
	// What the kubelet reports once the sandbox runs.
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		PodIP:     p.ip.String(),
		PodIPs:    []corev1.PodIP{{IP: p.ip.String()}},
		HostIP:    p.node.Addr.String(),
		HostIPs:   []corev1.HostIP{{IP: p.node.Addr.String()}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	if _, err := c.client.CoreV1().Pods(p.ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write status of pod %s: %w", p, err)
	}
	return serveProbes(t, p)
}

// serveProbes runs the pod's servers until the test ends: TCP accepts and
// closes, UDP echoes.
func serveProbes(t *testing.T, p *policyPod) error {
	for _, pp := range policyPorts {
		addr := ":" + strconv.Itoa(int(pp.port))
		if pp.proto == corev1.ProtocolTCP {
			ln, err := netlab.Listen(p.netns, "tcp", addr)
			if err != nil {
				return err
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					conn.Close()
				}
			}()
			continue
		}
		pc, err := netlab.ListenPacket(p.netns, "udp", addr)
		if err != nil {
			return err
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 512)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
	}
	return nil
}

// probe is one cell of the matrix.
type probe struct {
	from, to int // indexes in policyCluster.pods
	port     probePort
}

// matrix holds whether each probe passes.
type matrix map[probe]bool

// allProbes is every pod to every pod, itself included, on every port.
func (c *policyCluster) allProbes() []probe {
	var out []probe
	for _, port := range policyPorts {
		for from := range c.pods {
			for to := range c.pods {
				out = append(out, probe{from, to, port})
			}
		}
	}
	return out
}

// expected computes the matrix from the objects as the API holds them now:
// exactly what the daemons' informers see.
func (c *policyCluster) expected(t *testing.T, ctx context.Context) matrix {
	t.Helper()
	pods, err := c.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nss, err := c.client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pols, err := c.client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var podPtrs []*corev1.Pod
	for i := range pods.Items {
		podPtrs = append(podPtrs, &pods.Items[i])
	}
	var nsPtrs []*corev1.Namespace
	for i := range nss.Items {
		nsPtrs = append(nsPtrs, &nss.Items[i])
	}
	var polPtrs []*networkingv1.NetworkPolicy
	for i := range pols.Items {
		polPtrs = append(polPtrs, &pols.Items[i])
	}
	in := policytest.Input{Pods: podPtrs, Namespaces: nsPtrs, Policies: polPtrs}
	if c.cnp != nil {
		cnps, err := c.cnp.PolicyV1alpha2().ClusterNetworkPolicies().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range cnps.Items {
			in.ClusterPolicies = append(in.ClusterPolicies, &cnps.Items[i])
		}
		nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range nodes.Items {
			in.Nodes = append(in.Nodes, &nodes.Items[i])
		}
	}
	m := matrix{}
	for _, pr := range c.allProbes() {
		pkt := policytest.Packet{Src: c.pods[pr.from].ip, Dst: c.pods[pr.to].ip, Proto: pr.port.proto, Port: pr.port.port}
		m[pr] = policytest.ReferenceInput(in, pkt)
	}
	return m
}

// probeOnce reports whether one connection gets through: a TCP handshake,
// or a UDP datagram echoed (sent twice, half the timeout apart, in case one
// is lost).
func (c *policyCluster) probeOnce(ctx context.Context, pr probe) bool {
	from, to := c.pods[pr.from], c.pods[pr.to]
	addr := netip.AddrPortFrom(to.ip, pr.port.port).String()
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if pr.port.proto == corev1.ProtocolTCP {
		conn, err := netlab.Dial(ctx, from.netns, "tcp", addr)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	var conn net.Conn
	var err error
	for range 3 { // a port still held by a probe that wrapped round: the next
		local := &net.UDPAddr{IP: from.ip.AsSlice(), Port: from.nextUDPPort()}
		if conn, err = netlab.DialFrom(ctx, from.netns, "udp", local, addr); !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		return false
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	buf := make([]byte, 64)
	for try := range 2 {
		if _, err := conn.Write([]byte("probe")); err != nil {
			return false
		}
		wait := time.Now().Add(probeTimeout / 2)
		if try == 1 {
			wait = deadline
		}
		conn.SetReadDeadline(wait)
		n, err := conn.Read(buf)
		if err == nil && string(buf[:n]) == "probe" {
			return true
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			return false // refused: no server, or rejected
		}
	}
	return false
}

// probeAll runs the probes, probeParallel at once. A probe that fails where
// want says it passes is tried once more, so that a packet lost on a busy
// machine does not count as a denial; a probe that passes is proof.
func (c *policyCluster) probeAll(ctx context.Context, probes []probe, want matrix) matrix {
	got := make(matrix, len(probes))
	var mu sync.Mutex
	sem := make(chan struct{}, probeParallel)
	var wg sync.WaitGroup
	for _, pr := range probes {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ok := c.probeOnce(ctx, pr)
			if !ok && want[pr] {
				ok = c.probeOnce(ctx, pr)
			}
			mu.Lock()
			got[pr] = ok
			mu.Unlock()
		})
	}
	wg.Wait()
	return got
}

// policyWait is how long a change may take to show in the matrix before a
// scenario fails.
const policyWait = 10 * time.Second

// waitMatrix probes the whole matrix until it is the expected one or
// policyWait passes, and then fails with the difference. It reports
// whether the matrix was the expected one.
func (c *policyCluster) waitMatrix(t *testing.T, ctx context.Context, what string) bool {
	t.Helper()
	want := c.expected(t, ctx)
	probes := c.allProbes()
	deadline := time.Now().Add(policyWait)
	for round := 1; ; round++ {
		got := c.probeAll(ctx, probes, want)
		if c.differ(probes, want, got) == 0 {
			denied := 0
			for _, ok := range want {
				if !ok {
					denied++
				}
			}
			t.Logf("%s: the matrix is as expected after %d rounds, %d of %d probes denied", what, round, denied, len(probes))
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Errorf("%s: the matrix is not the expected one after %d rounds (%v):\n%s", what, round, policyWait, c.render(want, got))
			return false
		}
	}
}

// differ counts the probes where got is not want.
func (c *policyCluster) differ(probes []probe, want, got matrix) int {
	n := 0
	for _, pr := range probes {
		if want[pr] != got[pr] {
			n++
		}
	}
	return n
}

// render prints, per port, the expected matrix and the observed one where
// they differ: rows are sources, columns destinations; "." passes, "X" is
// denied, "+" passed but should be denied, "-" was denied but should pass.
func (c *policyCluster) render(want, got matrix) string {
	var b strings.Builder
	for _, port := range policyPorts {
		diff := false
		for from := range c.pods {
			for to := range c.pods {
				diff = diff || want[probe{from, to, port}] != got[probe{from, to, port}]
			}
		}
		if !diff {
			fmt.Fprintf(&b, "%s: as expected\n", port)
			continue
		}
		fmt.Fprintf(&b, "%-8s", port)
		for _, p := range c.pods {
			fmt.Fprintf(&b, " %-4s", p)
		}
		b.WriteString("\n")
		for from, p := range c.pods {
			fmt.Fprintf(&b, "%-8s", p)
			for to := range c.pods {
				pr := probe{from, to, port}
				cell := "."
				switch {
				case want[pr] && !got[pr]:
					cell = "-"
				case !want[pr] && got[pr]:
					cell = "+"
				case !want[pr]:
					cell = "X"
				}
				fmt.Fprintf(&b, " %-4s", cell)
			}
			b.WriteString("\n")
		}
	}
	b.WriteString(`("." passes, "X" denied, "+" passed but should be denied, "-" denied but should pass; rows from, columns to)` + "\n")
	for _, p := range c.pods {
		fmt.Fprintf(&b, "%s = %s on %s\n", p, p.ip, p.node.Name)
	}
	return b.String()
}

// createPolicies writes the policies into the API.
func (c *policyCluster) createPolicies(t *testing.T, ctx context.Context, pols []*networkingv1.NetworkPolicy) {
	t.Helper()
	for _, p := range pols {
		if _, err := c.client.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create NetworkPolicy %s/%s: %v", p.Namespace, p.Name, err)
		}
	}
}

// deleteAllPolicies removes every NetworkPolicy of the model's namespaces.
func (c *policyCluster) deleteAllPolicies(t *testing.T, ctx context.Context) {
	t.Helper()
	for _, ns := range policyNamespaces {
		err := c.client.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("delete the NetworkPolicies of %s: %v", ns, err)
		}
	}
}

// setPodLabels replaces a pod's labels.
func (c *policyCluster) setPodLabels(t *testing.T, ctx context.Context, p *policyPod, labels map[string]string) {
	t.Helper()
	pod, err := c.client.CoreV1().Pods(p.ns).Get(ctx, p.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Labels = labels
	if _, err := c.client.CoreV1().Pods(p.ns).Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("relabel %s: %v", p, err)
	}
}

// policyStatus is a node's `weft status policy --json`.
func policyStatus(ctx context.Context, n *netlab.Node) (daemon.PolicyStatus, error) {
	var st daemon.PolicyStatus
	err := api.NewClient(n.SocketPath(), 5*time.Second).Do(ctx, "GET", api.PathStatus+"/policy", nil, &st)
	return st, err
}

// policyTable describes what of weft's NetworkPolicy rules is in a node's
// kernel: the pol-* chains with their rule counts, the pol-* sets and maps
// with their element counts, and the named counters, one per line, sorted.
func policyTable(n *netlab.Node) (string, error) {
	f, err := os.Open(n.Netns)
	if err != nil {
		return "", err
	}
	defer f.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return "", fmt.Errorf("nftables in %s: %w", n.Name, err)
	}
	defer conn.CloseLasting()
	table := &nftables.Table{Name: "weft", Family: nftables.TableFamilyINet}
	var lines []string
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("list chains in %s: %w", n.Name, err)
	}
	for _, ch := range chains {
		if ch.Table.Name != table.Name || !strings.HasPrefix(ch.Name, "pol-") {
			continue
		}
		rules, err := conn.GetRules(table, ch)
		if err != nil {
			return "", fmt.Errorf("rules of %s in %s: %w", ch.Name, n.Name, err)
		}
		lines = append(lines, fmt.Sprintf("chain %s: %d rules", ch.Name, len(rules)))
	}
	sets, err := conn.GetSets(table)
	if err != nil {
		return "", fmt.Errorf("sets in %s: %w", n.Name, err)
	}
	for _, s := range sets {
		if !strings.HasPrefix(s.Name, "pol-") {
			continue
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return "", fmt.Errorf("elements of %s in %s: %w", s.Name, n.Name, err)
		}
		lines = append(lines, fmt.Sprintf("set %s: %d elements", s.Name, len(elems)))
	}
	objs, err := conn.GetNamedObjects(table)
	if err != nil {
		return "", fmt.Errorf("objects in %s: %w", n.Name, err)
	}
	for _, o := range objs {
		if c, ok := o.(*nftables.NamedObj); ok && strings.HasPrefix(c.Name, "pol-") {
			lines = append(lines, "object "+c.Name)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), nil
}
