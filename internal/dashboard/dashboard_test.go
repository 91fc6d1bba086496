package dashboard

import (
	"slices"
	"strings"
	"testing"
)

func TestQueries(t *testing.T) {
	model := `{
	  "panels": [
	    {"type": "row", "panels": [{"targets": [{"expr": "rate(a_total{instance=~\"$node\"}[$__rate_interval])"}]}]},
	    {"targets": [{"expr": "b"}, {"refId": "no expr"}]}
	  ],
	  "templating": {"list": [
	    {"type": "datasource", "name": "datasource", "query": "prometheus"},
	    {"type": "query", "name": "node", "query": {"query": "label_values(c{x=\"y\"}, instance)", "refId": "v"}},
	    {"type": "query", "name": "old", "query": "label_values(d, instance)"}
	  ]}
	}`
	got, err := Queries([]byte(model))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	want := []string{`b`, `c{x="y"}`, `d`, `rate(a_total{instance=~"$node"}[5m])`}
	if !slices.Equal(got, want) {
		t.Errorf("Queries = %q, want %q", got, want)
	}
}

func TestPanelQueries(t *testing.T) {
	model := `{"panels": [{"targets": [{"expr": "a"}]}],
	  "templating": {"list": [{"type": "query", "name": "node", "query": "label_values(b, instance)"}]}}`
	got, err := PanelQueries([]byte(model))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"a"}) {
		t.Errorf("PanelQueries = %q, want only the panel's", got)
	}
}

func TestUnfiltered(t *testing.T) {
	got, err := Unfiltered([]string{
		`rate(a_total{instance=~"$node"}[5m]) / on (instance) b{instance=~"$node", x="y"}`,
		`c{x="y"} + d`,
		`e{instance="$node"}`,
	}, `instance=~"$node"`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`c{x="y"}`, `d`, `e{instance="$node"}`}
	if !slices.Equal(got, want) {
		t.Errorf("Unfiltered = %q, want %q", got, want)
	}
}

func TestMetrics(t *testing.T) {
	for _, tc := range []struct {
		name  string
		exprs []string
		want  []string
		err   string // a part of the error; empty: none
	}{
		{name: "plain", exprs: []string{"up"}, want: []string{"up"}},
		{name: "nested and repeated", exprs: []string{
			`histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{instance=~"$node"}[5m])))`,
			`sum(rate(x_seconds_sum[5m])) / sum(rate(x_seconds_count[5m]))`,
			`x_seconds_count > 0 and on (instance) up`,
		}, want: []string{"up", "x_seconds_bucket", "x_seconds_count", "x_seconds_sum"}},
		{name: "name as matcher", exprs: []string{`{__name__="a"}`}, want: []string{"a"}},
		{name: "no metric", exprs: []string{`{job="x"}`}, err: "names no metric"},
		{name: "regexp name", exprs: []string{`{__name__=~"a.*"}`}, err: "names no metric"},
		{name: "syntax", exprs: []string{`rate(a[5m]`}, err: "parse"},
		{name: "unknown function", exprs: []string{`nonsense(a)`}, err: "parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Metrics(tc.exprs)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Metrics = %q, want %q", got, tc.want)
			}
		})
	}
}
