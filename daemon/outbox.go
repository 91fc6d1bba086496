package daemon

import (
	"slices"
	"time"
)

// outbox holds the relay signalling messages not yet acknowledged and
// says when each is due again. Pure: the caller passes the clock and sends
// what due returns. Not safe for concurrent use.
//
// A message is keyed by its addressee, kind and pair: a newer message of
// the same key replaces the one waiting (a report supersedes the older
// report), so the outbox never holds more than one message per key. It is
// sent at once, then again after First, 2×First, … up to Max between
// tries, until the addressee acknowledges its id, a newer message
// replaces it, or the addressee leaves the mesh (drop).
type outbox struct {
	cfg     retryConfig
	nextID  uint64
	pending map[outKey]*outItem
}

// retryConfig is the backoff of unacknowledged messages.
type retryConfig struct {
	First time.Duration // between the first and second try
	Max   time.Duration // the longest wait between tries
}

func defaultRetryConfig() retryConfig {
	return retryConfig{First: 300 * time.Millisecond, Max: 5 * time.Second}
}

type outKey struct {
	to   string
	kind byte
	pair string // "A B" for pair messages, "" for reports
}

type outItem struct {
	msg   relayMsg
	due   time.Time
	wait  time.Duration // before the next try
	tries int
}

func newOutbox(cfg retryConfig, firstID uint64) *outbox {
	return &outbox{cfg: cfg, nextID: firstID, pending: map[outKey]*outItem{}}
}

// put queues m (m.To set) for sending now, replacing a waiting message of
// the same key; it gives m its id.
func (o *outbox) put(m relayMsg, now time.Time) {
	o.nextID++
	m.ID = o.nextID
	o.pending[outKeyOf(m)] = &outItem{msg: m, due: now, wait: o.cfg.First}
}

func outKeyOf(m relayMsg) outKey {
	k := outKey{to: m.To, kind: m.Kind}
	if m.Kind != kindReport {
		k.pair = m.A + " " + m.B
	}
	return k
}

// cancel forgets the waiting message of m's key.
func (o *outbox) cancel(m relayMsg) { delete(o.pending, outKeyOf(m)) }

// ack removes the message with id sent to from; it reports whether one
// was waiting.
func (o *outbox) ack(from string, id uint64) bool {
	for k, it := range o.pending {
		if k.to == from && it.msg.ID == id {
			delete(o.pending, k)
			return true
		}
	}
	return false
}

// drop forgets every message to the node to.
func (o *outbox) drop(to string) {
	for k := range o.pending {
		if k.to == to {
			delete(o.pending, k)
		}
	}
}

// due returns the messages to send now, in a stable order, and schedules
// their next try.
func (o *outbox) due(now time.Time) []relayMsg {
	var out []relayMsg
	for _, it := range o.pending {
		if now.Before(it.due) {
			continue
		}
		out = append(out, it.msg)
		it.tries++
		it.due = now.Add(it.wait)
		it.wait = min(2*it.wait, o.cfg.Max)
	}
	slices.SortFunc(out, func(a, b relayMsg) int {
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	return out
}

// len is the number of messages waiting for an ack.
func (o *outbox) len() int { return len(o.pending) }
