package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weftnet/weft/internal/dashboard"
	"github.com/weftnet/weft/netlab"
)

// metricsPort is the daemons' --metrics-addr port in these tests.
const metricsPort = "6782"

// metricsClient talks HTTP to a node's --metrics-addr from inside its netns.
func metricsClient(n *netlab.Node) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return n.Dial(ctx, network, addr) },
	}}
}

// httpGet fetches path from the node's metrics port.
func httpGet(n *netlab.Node, path string) (int, string, error) {
	resp, err := metricsClient(n).Get("http://" + n.Addr.String() + ":" + metricsPort + path)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s on %s: %w", path, n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// scrape is one scrape of /metrics: the text and its metric families.
type scrape struct {
	text     string
	families map[string]*dto.MetricFamily
}

func scrapeMetrics(n *netlab.Node) (scrape, error) {
	code, body, err := httpGet(n, "/metrics")
	if err != nil {
		return scrape{}, err
	}
	if code != http.StatusOK {
		return scrape{}, fmt.Errorf("/metrics on %s = %d: %s", n.Name, code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return scrape{}, fmt.Errorf("parse /metrics of %s: %w", n.Name, err)
	}
	return scrape{text: body, families: fams}, nil
}

// lint runs the checks of `promtool check metrics` on the scrape.
func (s scrape) lint(t *testing.T) {
	t.Helper()
	problems, err := promlint.New(strings.NewReader(s.text)).Lint()
	if err != nil {
		t.Fatalf("lint /metrics: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// series lists the names of the series the scrape holds: each family's
// name, and for histograms and summaries the names of their parts.
func (s scrape) series() map[string]bool {
	out := map[string]bool{}
	for name, f := range s.families {
		if len(f.GetMetric()) == 0 {
			continue
		}
		out[name] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out
}

// value is the value of the series of family name whose labels include
// all of want; ok is false when there is none.
func (s scrape) value(name string, want map[string]string) (float64, bool) {
	f := s.families[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestHealthAndMetrics: the probes the DaemonSet uses and the Prometheus
// metrics answer on --metrics-addr, and /metrics passes promtool's lint.
func TestHealthAndMetrics(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	startAll(t, ctx, nodes, func(*netlab.Node) []string {
		return append(seedArgs(nodes[0], nodes), "--metrics-addr", ":"+metricsPort)
	})
	waitMesh(t, ctx, nodes)
	n := nodes[0]
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body, err := httpGet(n, p); err != nil || code != http.StatusOK {
			t.Errorf("%s = %d %s %v", p, code, body, err)
		}
	}
	var s scrape
	poll(t, ctx, func() error {
		if s, err = scrapeMetrics(n); err != nil {
			return err
		}
		for _, want := range []string{"weft_ready 1", `weft_peer_up{peer="node2"} 1`, "weft_mesh_members 2", "weft_ipam_allocations",
			`weft_peer_path{path="direct",peer="node2"} 1`, "weft_policy_enforcing 0"} {
			if !strings.Contains(s.text, want) {
				return &missing{want}
			}
		}
		return nil
	})
	s.lint(t)
}

type missing struct{ what string }

func (m *missing) Error() string { return "metrics lack " + m.what }

// TestMetricsDashboard: every metric the Grafana dashboard queries is
// scraped from a running daemon that networks pods and enforces a
// NetworkPolicy (two daemons against a real kube-apiserver, CNI ADD, CHECK
// and DEL through the real plugin, a default deny that drops a probe), the
// values say what happened, and the scrape passes promtool's lint.
func TestMetricsDashboard(t *testing.T) {
	dash, err := os.ReadFile("../deploy/grafana/weft.json")
	if err != nil {
		t.Fatal(err)
	}
	queries, err := dashboard.Queries(dash)
	if err != nil {
		t.Fatal(err)
	}
	wanted, err := dashboard.Metrics(queries)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	lab := newLab(t)
	cp, err := lab.AddNode(0)
	if err != nil {
		t.Fatal(err)
	}
	kapi := startKubelabHelper(t, ctx, cp.Netns, cp.Addr)
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	applyObjects(t, ctx, kapi, readManifest(t, manifestPath))
	for _, n := range nodes {
		if err := registerNode(ctx, kapi.Clientset(), n.Name, n.Addr); err != nil {
			t.Fatal(err)
		}
	}
	startAll(t, ctx, nodes, func(*netlab.Node) []string {
		return []string{"--kubeconfig", kapi.saKubeconfig, "--secret-file", "", "--wg-mode", "userspace",
			"--metrics-addr", ":" + metricsPort}
	})
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s daemon log:\n%s", n.Name, n.LogTail(30))
			}
		}
	})
	waitMesh(t, ctx, nodes)

	// A server on the first node, a client on the second, in a namespace
	// whose pods a default deny isolates for ingress.
	cfg := kapi.RESTConfig()
	cfg.WarningHandler = rest.NoWarnings{} // the pods' duplicate port 80 is meant (see startPod)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &policyCluster{client: client, nodes: nodes}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "m", Labels: map[string]string{"ns": "m"}}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	server := &policyPod{ns: "m", name: "server", node: nodes[0]}
	clientPod := &policyPod{ns: "m", name: "client", node: nodes[1]}
	for _, p := range []*policyPod{server, clientPod} {
		if err := c.startPod(t, ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// CHECK and DEL of a pod of the first node.
	scratch, err := nodes[0].AddPod(ctx, netlab.PodConfig{Namespace: "m", Name: "scratch"})
	if err != nil {
		t.Fatal(err)
	}
	if err := scratch.Check(ctx); err != nil {
		t.Fatalf("CNI CHECK: %v", err)
	}
	if err := scratch.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	c.createPolicies(t, ctx, []*networkingv1.NetworkPolicy{netpol("m", "deny", metav1.LabelSelector{}, ingressOnly, nil, nil)})

	target := net.JoinHostPort(server.ip.String(), "80")
	var s scrape
	poll(t, ctx, func() error {
		// A probe the policy drops, counted on the server's node.
		dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		if conn, err := netlab.Dial(dctx, clientPod.netns, "tcp", target); err == nil {
			conn.Close()
		}
		dcancel()
		if s, err = scrapeMetrics(nodes[0]); err != nil {
			return err
		}
		if v, _ := s.value("weft_policy_dropped_packets_total", map[string]string{"namespace": "m", "pod": "server", "direction": "ingress"}); v == 0 {
			return fmt.Errorf("no drop of m/server counted yet")
		}
		return nil
	})

	have := s.series()
	for _, name := range wanted {
		if !have[name] {
			t.Errorf("the dashboard queries %s, which a scrape of %s lacks", name, nodes[0].Name)
		}
	}
	for _, w := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"weft_ready", nil, 1},
		{"weft_policy_enforcing", nil, 1},
		{"weft_policy_policies", nil, 1},
		{"weft_policy_isolated_pods", map[string]string{"direction": "ingress"}, 1},
		{"weft_policy_apply_duration_seconds", nil, 1},
		{"weft_policy_rule_writes_total", nil, 1},
		{"weft_cni_requests_total", map[string]string{"operation": "add", "result": "success"}, 2},
		{"weft_cni_requests_total", map[string]string{"operation": "check", "result": "success"}, 1},
		{"weft_cni_requests_total", map[string]string{"operation": "del", "result": "success"}, 1},
		{"weft_cni_request_duration_seconds", map[string]string{"operation": "add"}, 2},
		{"weft_peer_path", map[string]string{"peer": nodes[1].Name, "path": "direct"}, 1},
		{"weft_peer_handshake_age_seconds", map[string]string{"peer": nodes[1].Name}, 0},
		{"weft_ipam_range_addresses", nil, 1 << 20},
		{"weft_ipam_used_addresses", nil, 2}, // the tunnel address and the server
	} {
		v, ok := s.value(w.name, w.labels)
		if !ok || v < w.min {
			t.Errorf("%s%v = %v (present: %v), want at least %v", w.name, w.labels, v, ok, w.min)
		}
	}
	s.lint(t)
}
