package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/netlab"
	"github.com/weftnet/weft/tests/kubelab"
)

// TestKubeDaemons runs real daemons in lab nodes against a kube-apiserver
// in another lab node, as the DaemonSet would: no --peers, no
// --secret-file, the ServiceAccount's rights only. They find each other
// from the Node list, agree on one generated Secret, join a Node added
// later, and reclaim a deleted Node's ranges exactly once while pods on
// other nodes keep talking.
func TestKubeDaemons(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()

	// The API runs in a lab node of its own, with no daemon: the nodes
	// reach it over the underlay as they reach each other.
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
	kubeconfig := kl.saKubeconfig
	admin := kl.Clientset()
	args := []string{"--kubeconfig", kubeconfig, "--secret-file", "", "--wg-mode", "userspace",
		"--metrics-addr", "", "--reap-time", "20s", "--log-level", "debug"}

	// Three Nodes registered, three daemons started at the same moment.
	for _, n := range nodes {
		if err := registerNode(ctx, admin, n.Name, n.Addr); err != nil {
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

	// A member that gossips under the name of a Node but with another key
	// than the Node carries gets no tunnel on any node.
	impostor(t, ctx, lab, admin, secrets.Items[0].Data[kube.SecretKey], nodes)

	// A fourth Node joins later and is meshed from the Node list.
	n4, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := registerNode(ctx, admin, n4.Name, n4.Addr); err != nil {
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
	if err := admin.CoreV1().Nodes().Delete(ctx, n4.Name, metav1.DeleteOptions{}); err != nil {
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

func init() { labHelpers["kubelab"] = kubelabHelper }

// helperAPI is the address book of a kubelab run by kubelabHelper.
type helperAPI struct {
	Server          string `json:"server"`
	AdminKubeconfig string `json:"adminKubeconfig"`
	SAKubeconfig    string `json:"saKubeconfig"`
	// NodeKubeconfigs are kubelets' identities (system:node:NAME in
	// system:nodes) by node name, for the names in $WEFT_KUBELAB_NODES.
	NodeKubeconfigs map[string]string `json:"nodeKubeconfigs,omitempty"`
	Error           string            `json:"error,omitempty"`
}

// kubelabHelper runs a kubelab in the network namespace $WEFT_KUBELAB_NETNS
// on $WEFT_KUBELAB_BIND, prints its helperAPI as one JSON line and stops
// it when its stdin closes (the test ended or died).
//
// It runs in a process of its own because kubelab's servers die with the
// OS thread that started them (Pdeathsig), and netlab discards threads it
// moved into namespaces: in the test process, any later lab operation may
// kill the API.
func kubelabHelper() {
	out := json.NewEncoder(os.Stdout)
	bind, err := netip.ParseAddr(os.Getenv("WEFT_KUBELAB_BIND"))
	if err != nil {
		out.Encode(helperAPI{Error: err.Error()})
		os.Exit(1)
	}
	c, err := kubelab.Start(context.Background(), kubelab.Config{Netns: os.Getenv("WEFT_KUBELAB_NETNS"), BindAddr: bind})
	if err != nil {
		out.Encode(helperAPI{Error: err.Error()})
		os.Exit(1)
	}
	sa, err := c.KubeconfigFor(weftSAUser, weftSAGroups)
	if err != nil {
		c.Close()
		out.Encode(helperAPI{Error: err.Error()})
		os.Exit(1)
	}
	nodes := map[string]string{}
	for _, name := range strings.FieldsFunc(os.Getenv("WEFT_KUBELAB_NODES"), func(r rune) bool { return r == ',' }) {
		if nodes[name], err = c.KubeconfigFor("system:node:"+name, []string{"system:nodes"}); err != nil {
			c.Close()
			out.Encode(helperAPI{Error: err.Error()})
			os.Exit(1)
		}
	}
	out.Encode(helperAPI{Server: c.Server(), AdminKubeconfig: c.KubeconfigPath(), SAKubeconfig: sa, NodeKubeconfigs: nodes})
	io.Copy(io.Discard, os.Stdin)
	if err := c.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close kubelab:", err)
	}
}

// remoteAPI is a kubelab in a helper process, reached from the test
// process through the namespace it runs in.
type remoteAPI struct {
	cfg          *rest.Config
	cs           kubernetes.Interface
	saKubeconfig string
	// nodeKubeconfigs are the kubelets' by node name (startKubelabHelper's
	// nodes).
	nodeKubeconfigs map[string]string
}

func (r *remoteAPI) RESTConfig() *rest.Config        { return rest.CopyConfig(r.cfg) }
func (r *remoteAPI) Clientset() kubernetes.Interface { return r.cs }

// startKubelabHelper starts kubelabHelper for the namespace at netnsPath
// and waits until its API is ready; the test's end stops it. Kubelets of
// the nodes named get kubeconfigs of their own.
func startKubelabHelper(t *testing.T, ctx context.Context, netnsPath string, bind netip.Addr, nodes ...string) *remoteAPI {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "WEFT_LAB_HELPER=kubelab", "WEFT_KUBELAB_NETNS="+netnsPath, "WEFT_KUBELAB_BIND="+bind.String(),
		"WEFT_KUBELAB_NODES="+strings.Join(nodes, ","))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("kubelab helper: %v\n%s", err, stderr.String())
			}
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-done
			t.Errorf("kubelab helper did not stop; killed")
		}
	})
	got := make(chan helperAPI, 1)
	go func() {
		var api helperAPI
		if err := json.NewDecoder(stdout).Decode(&api); err != nil {
			api.Error = fmt.Sprintf("read the helper's answer: %v", err)
		}
		got <- api
	}()
	var api helperAPI
	select {
	case api = <-got:
	case <-ctx.Done():
		t.Fatalf("kubelab helper did not start: %v\n%s", ctx.Err(), stderr.String())
	}
	if strings.Contains(api.Error, kubelab.ErrMissingBinary.Error()) {
		t.Skipf("no Kubernetes API for this test: %s", api.Error)
	}
	if api.Error != "" {
		t.Fatalf("kubelab helper: %s\n%s", api.Error, stderr.String())
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", api.AdminKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = netnsDial(netnsPath)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &remoteAPI{cfg: cfg, cs: cs, saKubeconfig: api.SAKubeconfig, nodeKubeconfigs: api.NodeKubeconfigs}
}

// netnsDial dials from inside the network namespace at path.
func netnsDial(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := ns.WithNetNSPath(path, func(ns.NetNS) error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// registerNode creates a Node with an InternalIP and a Ready condition, as
// a kubelet registers one.
func registerNode(ctx context.Context, cs kubernetes.Interface, name string, ip netip.Addr) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name, corev1.LabelOSStable: "linux"}}}
	created, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	now := metav1.Now()
	created.Status = corev1.NodeStatus{
		Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}, {Type: corev1.NodeHostName, Address: name}},
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}},
	}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write status of node %s: %w", name, err)
	}
	return nil
}

// impostor registers a Node "impostor" carrying one public key and runs a
// member of that name that gossips another; every daemon refuses it as a
// whole (no WireGuard peer, so status has its one row, with no path) and
// logs why.
func impostor(t *testing.T, ctx context.Context, lab *netlab.Lab, admin kubernetes.Interface, secret []byte, nodes []*netlab.Node) {
	t.Helper()
	host, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	const name = "impostor"
	if err := registerNode(ctx, admin, name, host.Addr); err != nil {
		t.Fatal(err)
	}
	pinned, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, kube.AnnotationPublicKey, pinned.PublicKey().String())
	if _, err := admin.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	running := startRogue(t, ctx, host, name, nodes[0].Addr.String(), secretFile, "10.32.0.1")
	poll(t, ctx, func() error {
		running()
		for _, n := range nodes {
			st, err := peersStatus(ctx, n)
			if err != nil {
				return err
			}
			var rows []daemon.PeerStatus
			for _, p := range st.Peers {
				if p.Name == name {
					rows = append(rows, p)
				}
			}
			if len(rows) != 1 || !strings.Contains(rows[0].Refused, "but its Node carries") {
				return fmt.Errorf("%s lists the impostor as %+v, want one row refused for its key", n.Name, rows)
			}
			if rows[0].Path != "none" || len(rows[0].AllowedIPs) != 0 {
				t.Errorf("%s gives the impostor a tunnel: %+v", n.Name, rows[0])
			}
			if !logged(n, "refusing a peer whose key is not its Node's", "peer="+name) {
				return fmt.Errorf("%s has not logged the refusal of the impostor", n.Name)
			}
		}
		return nil
	})
}
