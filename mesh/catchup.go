package mesh

import (
	"context"
	"math/rand/v2"
	"time"
)

// Catching up after a join.
//
// Joining is a push/pull with a seed: the new node gets the seed's member
// list as it is at that moment. When a whole cluster starts at once (a
// batch join, or every node restarting after an outage), the nodes that
// reach the seed first get an almost empty list and would learn the others
// from gossip, which carries a few members per packet: 250 members took
// ~10 s to mesh, 1000 far longer. So after joining, a node pulls the full
// state again a few times, soon, after catchUpDelays: from the seed it
// joined through (which every later joiner has told about itself) as long
// as the seed still teaches it members, then from random members. It stops
// early once its member count has not changed over two pulls in a row: a
// node that joins a settled cluster makes two extra pulls.
var catchUpDelays = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, time.Second, 2 * time.Second}

// catchUp runs the catch-up pulls after a join through seed; see above.
func (m *Mesh) catchUp(ctx context.Context, seed string) {
	quiet := 0
	last := m.numNodes.Load()
	for i, delay := range catchUpDelays {
		wait := time.Duration(float64(delay) * (0.8 + 0.4*rand.Float64()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		var err error
		if seed != "" {
			_, err = m.join(seed)
		} else {
			err = m.SyncNow()
		}
		now := m.numNodes.Load()
		if err != nil || now == last {
			seed = "" // random members from now on
		}
		m.log.Debug("caught up after joining", "pull", i+1, "members", now, "learned", now-last, "err", err)
		if err == nil && now == last {
			quiet++
		} else {
			quiet = 0
		}
		if quiet >= 2 {
			return
		}
		last = now
	}
}
