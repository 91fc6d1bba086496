package daemon

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestRankRelays(t *testing.T) {
	cands := []string{"n3", "n4", "n5", "n6", "n7"}
	tests := []struct {
		name       string
		a, b       string
		candidates []string
	}{
		{"five candidates", "n1", "n2", cands},
		{"ends among the candidates are left out", "n1", "n2", append([]string{"n1", "n2"}, cands...)},
		{"duplicates are left out", "n1", "n2", append(slices.Clone(cands), cands...)},
		{"one candidate", "n1", "n2", []string{"n9"}},
		{"none", "n1", "n2", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rankRelays(tt.a, tt.b, tt.candidates)
			for _, c := range got {
				if c == tt.a || c == tt.b {
					t.Errorf("an end of the pair ranks as its relay: %v", got)
				}
			}
			// The same whichever end computes it, in whatever order the
			// candidates come.
			rev := slices.Clone(tt.candidates)
			slices.Reverse(rev)
			if back := rankRelays(tt.b, tt.a, rev); !slices.Equal(back, got) {
				t.Errorf("the two ends rank differently: %v and %v", got, back)
			}
			for i := 1; i < len(got); i++ {
				if relayScore(tt.a, tt.b, got[i-1]) < relayScore(tt.a, tt.b, got[i]) {
					t.Errorf("not by descending score: %v", got)
				}
			}
		})
	}
}

// TestRankRelaysSpread: the first choices of many pairs spread over the
// candidates, and removing a candidate moves only the pairs it led.
func TestRankRelaysSpread(t *testing.T) {
	var cands []string
	for i := range 10 {
		cands = append(cands, fmt.Sprintf("relay%02d", i))
	}
	first := map[string]int{}
	const pairs = 1000
	moved := 0
	for i := range pairs {
		a, b := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
		r := rankRelays(a, b, cands)
		first[r[0]]++
		without := rankRelays(a, b, cands[1:])
		if without[0] != r[0] {
			moved++
			if r[0] != cands[0] {
				t.Errorf("pair %s-%s moved from %s though only %s left", a, b, r[0], cands[0])
			}
		}
	}
	for _, c := range cands {
		// 100 expected of each; a fair hash stays well within 50..150.
		if first[c] < 50 || first[c] > 150 {
			t.Errorf("%s is the first choice of %d of %d pairs, want about %d", c, first[c], pairs, pairs/len(cands))
		}
	}
	if moved != first[cands[0]] {
		t.Errorf("%d pairs moved when %s left, want the %d it led", moved, cands[0], first[cands[0]])
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

// TestPathProbeUnseen: a peer not in the tunnel yet is judged from when it
// was first seen, not as silent since ever, and its first bytes keep it so.
func TestPathProbeUnseen(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	var p pathProbe
	if p.healthy(t0) {
		t.Fatal("a peer never seen counts as healthy")
	}
	p.unseen(t0)
	p.unseen(t0.Add(10 * time.Second)) // still being added: the clock does not restart
	if !p.healthy(t0.Add(directStale - time.Second)) {
		t.Error("a peer being added is judged broken before it had time to send")
	}
	if p.healthy(t0.Add(directStale + time.Second)) {
		t.Error("a peer that never got into the tunnel still counts as healthy")
	}
	p.observe(0, t0.Add(directStale-2*time.Second))
	if p.healthy(t0.Add(directStale + time.Second)) {
		t.Error("an entry that received nothing since first seen counts as healthy")
	}
}
