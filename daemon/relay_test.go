package daemon

import (
	"testing"
	"time"
)

func TestChooseRelay(t *testing.T) {
	members := []string{"n4", "n1", "n3", "n2"}
	tests := []struct {
		name        string
		unreachable map[string][]string
		a, b, want  string
	}{
		{"direct", nil, "n1", "n2", ""},
		{"cut seen by one side", map[string][]string{"n1": {"n2"}}, "n1", "n2", "n3"},
		{"cut seen by the other side", map[string][]string{"n2": {"n1"}}, "n2", "n1", "n3"},
		{"smallest relay that reaches both", map[string][]string{"n1": {"n2"}, "n3": {"n2"}}, "n1", "n2", "n4"},
		{"relay that cannot reach one end is skipped", map[string][]string{"n1": {"n2", "n3"}}, "n1", "n2", "n4"},
		{"no relay possible", map[string][]string{"n1": {"n2", "n3", "n4"}}, "n1", "n2", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			un := func(n string) []string { return tt.unreachable[n] }
			got := chooseRelay(tt.a, tt.b, members, un)
			if got != tt.want {
				t.Errorf("chooseRelay(%s, %s) = %q, want %q", tt.a, tt.b, got, tt.want)
			}
			if back := chooseRelay(tt.b, tt.a, members, un); back != got {
				t.Errorf("the two ends disagree: %q and %q", got, back)
			}
		})
	}
}

func TestPathProbe(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	var p pathProbe
	p.observe(0, t0)
	if !p.healthy(t0.Add(directStale - time.Second)) {
		t.Error("a new peer gets a grace period")
	}
	if p.healthy(t0.Add(directStale + time.Second)) {
		t.Error("a path that received nothing for longer than directStale is broken")
	}
	p.observe(148, t0.Add(directStale+2*time.Second))
	if !p.healthy(t0.Add(directStale + 3*time.Second)) {
		t.Error("bytes arriving again make the path healthy")
	}
	p.observe(148, t0.Add(2*directStale+3*time.Second))
	if p.healthy(t0.Add(2*directStale + 3*time.Second)) {
		t.Error("unchanged counters do not count as traffic")
	}
}
