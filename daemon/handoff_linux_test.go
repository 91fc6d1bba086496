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
// a successor that asked already is taken at once, stopping or not.
func TestAwaitSuccessor(t *testing.T) {
	// When the new daemon asks, relative to awaitSuccessor.
	const (
		never  = iota
		before // asked and queued before the call
		during // asks while the daemon waits (or just before it does)
		after  // asks once the call has returned, and is hung up on
	)
	tests := []struct {
		name     string
		wait     time.Duration
		stopping bool
		asks     int
		want     bool
	}{
		{"stops and one comes", time.Minute, true, during, true},
		{"stops and none comes", 100 * time.Millisecond, true, never, false},
		{"no wait configured", 0, true, after, false},
		{"failed, no wait", time.Minute, false, after, false},
		{"failed, one asked already", time.Minute, false, before, true},
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
			ask := func() {
				go func() {
					_, err := handoff.Request(ctx, filepath.Join(a.cfg.RunDir, handoff.SocketName))
					asked <- err
				}()
			}
			switch tt.asks {
			case before:
				ask()
				for len(a.successors) == 0 {
					if ctx.Err() != nil {
						t.Fatal("the new daemon's request never reached the daemon")
					}
					time.Sleep(5 * time.Millisecond)
				}
			case during:
				ask()
			}
			start := time.Now()
			s := a.awaitSuccessor(tt.stopping)
			if (s != nil) != tt.want {
				t.Fatalf("successor %v, want one: %v", s, tt.want)
			}
			if !tt.want && time.Since(start) > tt.wait+5*time.Second {
				t.Errorf("waited %v with --handoff-wait %v", time.Since(start), tt.wait)
			}
			if !tt.stopping && time.Since(start) > 5*time.Second {
				t.Errorf("a daemon that failed waited %v for a successor", time.Since(start))
			}
			if tt.asks == after {
				ask()
			}
			if s != nil {
				s.Close()
			}
			a.closeHandoff()
			if tt.asks != never {
				// Hung up on, the new daemon starts as after a crash.
				if err := <-asked; !errors.Is(err, handoff.ErrPredecessorGone) && !errors.Is(err, handoff.ErrNoPredecessor) {
					t.Errorf("the new daemon got %v", err)
				}
			}
		})
	}
}
