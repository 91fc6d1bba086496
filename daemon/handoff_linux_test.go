package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/weftnet/weft/daemon/handoff"
)

// TestAwaitSuccessor: a daemon that stops waits --handoff-wait for a new
// daemon and no longer; one that did not stop (it failed) does not wait;
// a successor that asked already is taken at once.
func TestAwaitSuccessor(t *testing.T) {
	tests := []struct {
		name     string
		wait     time.Duration
		stopping bool
		asks     bool // a successor asks after the daemon began to wait
		want     bool
	}{
		{"stops and one comes", time.Minute, true, true, true},
		{"stops and none comes", 100 * time.Millisecond, true, false, false},
		{"no wait configured", 0, true, true, false},
		{"failed, no wait", time.Minute, false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := testAgent(t.TempDir(), "node1")
			a.cfg.RunDir = t.TempDir()
			a.cfg.HandoffWait = tt.wait
			a.successors = make(chan *handoff.Successor, 1)
			a.listenHandoff()
			if a.handoffLn == nil {
				t.Fatal("no handoff socket")
			}
			defer a.closeHandoff()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			asked := make(chan error, 1)
			if tt.asks {
				go func() {
					_, err := handoff.Request(ctx, filepath.Join(a.cfg.RunDir, handoff.SocketName))
					asked <- err
				}()
			}
			start := time.Now()
			s := a.awaitSuccessor(tt.stopping)
			if (s != nil) != tt.want {
				t.Fatalf("successor %v, want one: %v", s, tt.want)
			}
			if !tt.want && time.Since(start) > tt.wait+5*time.Second {
				t.Errorf("waited %v with --handoff-wait %v", time.Since(start), tt.wait)
			}
			if s != nil {
				s.Close()
			}
			a.closeHandoff()
			if tt.asks {
				// Hung up on, the new daemon starts as after a crash.
				if err := <-asked; !errors.Is(err, handoff.ErrPredecessorGone) && !errors.Is(err, handoff.ErrNoPredecessor) {
					t.Errorf("the new daemon got %v", err)
				}
			}
		})
	}
}
