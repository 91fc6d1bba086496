package daemon

import (
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/weftnet/weft/internal/dashboard"
	"github.com/weftnet/weft/ipalloc"
	"github.com/weftnet/weft/policy"
)

// stateCollector runs the scrape-time collect functions on fixed status
// data, described as the daemon's collector describes them.
type stateCollector struct{ collect func(emit) }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { metricsCollector{}.Describe(ch) }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.collect(func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	})
}

func TestStateMetrics(t *testing.T) {
	peers := []PeerStatus{
		{Name: "node2", State: "alive", Path: "direct", LastHandshake: "2026-01-01T00:00:00Z", HandshakeAge: 12, RxBytes: 100, TxBytes: 200,
			DirectPath: "up", RTT: 0.0015, ProbeLoss: 0.05},
		{Name: "node5", State: "alive", Path: "relayed", Via: "node2", DirectPath: "down", ProbeLoss: 1},
		{Name: "node3", State: "alive", Path: "relayed", Via: "node2"},
		{Name: "node4", State: "down", Path: "none"},
		{PublicKey: "abc…", State: "unknown", Path: "direct"}, // no name: not reported
	}
	ipam := ipalloc.Status{
		Self: "node1", Ready: true, Size: 1 << 20, Allocations: 3,
		Nodes: []ipalloc.NodeStatus{
			{Name: "node1", Size: 1 << 19, Used: 3, Free: 1<<19 - 3, Reachable: true},
			{Name: "node9", Size: 1 << 19, Used: 10, Free: 1<<19 - 10},
		},
		UnreachableAddresses: 1 << 19, UnreachableShare: 0.5,
		PendingClaims: []ipalloc.ClaimStatus{{Dead: "node9", Ranges: []netip.Prefix{netip.MustParsePrefix("10.40.0.0/13")}}},
	}
	pol := policyState{
		Enforcing: true,
		Summary: policy.Summary{
			Policies: []policy.PolicySummary{{Namespace: "x", Name: "deny"}},
			Pods: []policy.PodSummary{
				{Namespace: "x", Name: "a", Ingress: []string{"x/deny"}, IngressEntries: 2},
				{Namespace: "x", Name: "b", Ingress: []string{"x/deny"}, Egress: []string{"x/deny"}, IngressEntries: 1, EgressEntries: 4},
				{Namespace: "y", Name: "c"},
			},
		},
		Writes:  7,
		Changed: time.Unix(1700000000, 500000000),
		Drops: []policy.DropCount{
			{Namespace: "x", Name: "a", Direction: policy.Ingress, Packets: 5, Bytes: 300},
			{Namespace: "x", Name: "b", Direction: policy.Egress, Packets: 1, Bytes: 60},
			{Namespace: "x", Name: "a", Direction: policy.Ingress, Packets: 2, Bytes: 100}, // a replaced pod's counter
		},
	}
	c := stateCollector{func(e emit) {
		collectPeers(e, peers, 1000)
		collectRotation(e, PeersStatus{KeyRotation: KeyRotationStatus{State: "pending", Rotations: 2},
			Secrets: &SecretsStatus{Held: []string{"0123456789abcdef", "fedcba9876543210"}}})
		collectIPAM(e, ipam)
		collectPolicy(e, pol)
	}}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	enc := expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	golden(t, "metrics", text.String())
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	// Without Kubernetes only weft_policy_enforcing is reported.
	off := stateCollector{func(e emit) { collectPolicy(e, policyState{}) }}
	if n := testutil.CollectAndCount(off); n != 1 {
		t.Errorf("policy metrics without Kubernetes: %d series, want only weft_policy_enforcing", n)
	}
}

// exportedNames lists every series name the daemon's /metrics can hold:
// the names its collectors describe, with _bucket, _sum and _count for
// histograms and _sum and _count for summaries.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	m := newMetrics()
	all := append([]prometheus.Collector{metricsCollector{}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}, m.collectors()...)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for _, c := range all {
		ch := make(chan *prometheus.Desc)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			match := fqName.FindStringSubmatch(d.String())
			if match == nil {
				t.Fatalf("no name in %s", d)
			}
			names[match[1]] = true
		}
	}
	// The types: every instrumented metric has a series from the start;
	// the scrape-time collector reports only gauges and counters.
	reg := prometheus.NewRegistry()
	reg.MustRegister(all[1:]...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		var suffixes []string
		switch mf.GetType().String() {
		case "HISTOGRAM":
			suffixes = []string{"_bucket", "_sum", "_count"}
		case "SUMMARY":
			suffixes = []string{"_sum", "_count"}
		}
		for _, s := range suffixes {
			names[mf.GetName()+s] = true
		}
	}
	return names
}

// Every query of the Grafana dashboard parses as PromQL and selects only
// metrics the daemon exports, and every panel follows the node variable.
func TestDashboardNamesExportedMetrics(t *testing.T) {
	model, err := os.ReadFile("../deploy/grafana/weft.json")
	if err != nil {
		t.Fatal(err)
	}
	queries, err := dashboard.Queries(model)
	if err != nil {
		t.Fatal(err)
	}
	if len(queries) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	used, err := dashboard.Metrics(queries)
	if err != nil {
		t.Fatal(err)
	}
	exported := exportedNames(t)
	for _, name := range used {
		if !exported[name] {
			t.Errorf("the dashboard queries %s, which the daemon does not export", name)
		}
	}
	panels, err := dashboard.PanelQueries(model)
	if err != nil {
		t.Fatal(err)
	}
	unfiltered, err := dashboard.Unfiltered(panels, `instance=~"$node"`)
	if err != nil {
		t.Fatal(err)
	}
	for _, sel := range unfiltered {
		t.Errorf("the dashboard's selector %s ignores the node variable (add instance=~\"$node\")", sel)
	}
	inUse := map[string]bool{}
	for _, name := range used {
		inUse[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")] = true
	}
	for name := range exported {
		if strings.HasPrefix(name, "weft_") && !inUse[name] && !inUse[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")] {
			t.Logf("not on the dashboard: %s", name)
		}
	}
}
