// Package dashboard reads the PromQL queries of a Grafana dashboard's JSON
// model and the metric names they select, so tests can hold the dashboard
// in deploy/grafana to the metrics the daemon exports.
package dashboard

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// Queries returns every PromQL query of a dashboard's JSON model: the expr
// of each target, wherever the panel sits (rows nest panels), and the
// query of each query variable. Grafana's own syntax is turned into plain
// PromQL: label_values(EXPR, label) becomes EXPR, and the interval macros
// ($__rate_interval and the like) become a fixed range.
func Queries(model []byte) ([]string, error) {
	panels, vars, err := split(model)
	return append(panels, vars...), err
}

// PanelQueries is Queries without the variables' queries.
func PanelQueries(model []byte) ([]string, error) {
	panels, _, err := split(model)
	return panels, err
}

func split(model []byte) (panels, vars []string, err error) {
	var root any
	if err := json.Unmarshal(model, &root); err != nil {
		return nil, nil, fmt.Errorf("read dashboard JSON: %w", err)
	}
	walk(root, func(m map[string]any) {
		if e, ok := m["expr"].(string); ok {
			panels = append(panels, promQL(e))
		}
	})
	if dash, ok := root.(map[string]any); ok {
		tmpl, _ := dash["templating"].(map[string]any)
		list, _ := tmpl["list"].([]any)
		for _, v := range list {
			v, _ := v.(map[string]any)
			if v["type"] != "query" {
				continue
			}
			q := v["query"]
			if obj, ok := q.(map[string]any); ok { // Grafana 10+: {"query": "...", "refId": ...}
				q = obj["query"]
			}
			s, ok := q.(string)
			if !ok {
				return nil, nil, fmt.Errorf("variable %v: query is %T, want a string", v["name"], q)
			}
			vars = append(vars, promQL(s))
		}
	}
	return panels, vars, nil
}

func walk(v any, f func(map[string]any)) {
	switch v := v.(type) {
	case map[string]any:
		f(v)
		for _, c := range v {
			walk(c, f)
		}
	case []any:
		for _, c := range v {
			walk(c, f)
		}
	}
}

var (
	labelValues    = regexp.MustCompile(`^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)
	intervalMacros = regexp.MustCompile(`\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?`)
)

// promQL turns a Grafana query into the PromQL Prometheus would get.
func promQL(q string) string {
	if m := labelValues.FindStringSubmatch(q); m != nil {
		q = m[1]
	}
	return intervalMacros.ReplaceAllString(q, "5m")
}

// Metrics parses each expression with Prometheus' own PromQL parser and
// returns the metric names they select, sorted and without repeats. An
// expression that does not parse, or one with a selector that names no
// metric (`{job="x"}`, a regular expression on __name__), is an error:
// such a query cannot be checked against what the daemon exports.
func Metrics(exprs []string) ([]string, error) {
	var names []string
	for _, e := range exprs {
		ast, err := parser.ParseExpr(e)
		if err != nil {
			return nil, fmt.Errorf("parse %q: %w", e, err)
		}
		var bad error
		parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
			if name == "" && bad == nil {
				bad = fmt.Errorf("%q: the selector %s names no metric", e, strings.TrimSpace(vs.String()))
			}
			if name != "" {
				names = append(names, name)
			}
			return nil
		})
		if bad != nil {
			return nil, bad
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// Unfiltered returns the selectors of the expressions that lack the label
// matcher want (as PromQL writes it, e.g. `instance=~"$node"`): panels that
// would ignore the dashboard's variable.
func Unfiltered(exprs []string, want string) ([]string, error) {
	var out []string
	for _, e := range exprs {
		ast, err := parser.ParseExpr(e)
		if err != nil {
			return nil, fmt.Errorf("parse %q: %w", e, err)
		}
		parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			if !slices.ContainsFunc(vs.LabelMatchers, func(m *labels.Matcher) bool { return m.String() == want }) {
				out = append(out, vs.String())
			}
			return nil
		})
	}
	return out, nil
}
