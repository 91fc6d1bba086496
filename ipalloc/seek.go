package ipalloc

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Asking peers for space (the requester's side of a donation).
//
// An Allocate that finds no free address never talks to a peer itself: it
// starts a donation round, if none is running, and waits for the space to
// change, for the round to end or for its context, whichever comes first.
// So an ADD waits at most as long as its caller allows, whatever the peers
// do, and every ADD waiting at once shares one round.
//
// A round asks the donors one after another, hedged: the best one first;
// if it has not answered after hedgeDelay, the next one too, while the
// first may still answer; a donor that answers "nothing to give", or whose
// request could not even be sent, is followed by the next one at once. The
// round ends with the first donation, or when every donor asked has
// answered or timed out (RequestTimeout). A donor that timed out is silent
// for silentFor: asked only after every other donor with space.
//
//	Allocate ──no space──► round running? ──no──► start a round
//	    ▲                        │ yes                   │
//	    └──── space changed ◄────┴── wait ◄──────────────┘
//	          or round ended             └── ctx done ──► ErrNoSpace (retry)
//
// A send that blocks (a dial to a peer whose packets are dropped waits for
// its TCP timeout) holds only its own goroutine: the round stops waiting
// for it after RequestTimeout, and no second request goes to a peer whose
// last send has not returned yet.

// silentFor is how long a peer that did not answer a donation request is
// asked only as a last resort.
const silentFor = 30 * time.Second

// hedgeDelay is how long a round waits for a donor before asking the next
// one as well: a donation over a loaded LAN takes well under it.
func (a *Allocator) hedgeDelay() time.Duration { return a.cfg.RequestTimeout / 4 }

// askResult is the outcome of one donation request.
type askResult struct {
	peer     string
	answered bool // the peer answered, with or without space
	gave     bool // the answer carried a donation that merged
}

// needSpaceLocked starts a donation round unless one is running, and
// returns the channel to wait on: it is closed when the space may have
// changed or the round ended. It fails at once when no peer could give
// anything. Callers hold a.mu; live is what Config.Peers said, without
// this node.
func (a *Allocator) needSpaceLocked(live []string) (<-chan struct{}, error) {
	if !a.seeking {
		donors, err := a.donorsLocked(live)
		if err != nil {
			return nil, err
		}
		a.seeking = true
		a.seekErr = nil
		a.bg.Add(1)
		go func() {
			defer a.bg.Done()
			a.seek(donors)
		}()
	}
	return a.spaceCh, nil
}

// wakeLocked wakes every Allocate waiting for space. Callers hold a.mu.
func (a *Allocator) wakeLocked() {
	close(a.spaceCh)
	a.spaceCh = make(chan struct{})
}

// donorsLocked lists the live peers to ask for space, best first: peers
// that answered lately before silent ones, then those that published free
// addresses before those that published none, then by free addresses, most
// first. It says why when there is none to ask. Callers hold a.mu.
func (a *Allocator) donorsLocked(live []string) ([]string, error) {
	counts := map[string]uint64{}
	var total uint64
	for owner, f := range a.ring.FreeCounts() {
		if owner == a.cfg.Self {
			continue
		}
		n := min(f.Count, a.ring.Owned(owner))
		counts[owner] = n
		total += n
	}
	if total == 0 && a.free == 0 {
		return nil, fullError{a.cfg.CIDR}
	}
	if a.cfg.Transport == nil {
		return nil, noSpaceError{"this node has no free address and cannot ask peers for a share"}
	}
	var donors []string
	var reachable uint64
	for _, p := range live {
		reachable += counts[p]
		// A published count of 0 may be old (addresses released since):
		// such an owner is asked too, after the others.
		if (counts[p] > 0 || a.ring.Owned(p) > 0) && a.sending[p] == 0 {
			donors = append(donors, p)
		}
	}
	if len(donors) == 0 {
		if reachable > 0 {
			return nil, noSpaceError{fmt.Sprintf("this node has no free address and the peers with space (%s) have not taken the last request yet",
				strings.Join(a.blockedPeersLocked(), ", "))}
		}
		return nil, noSpaceError{fmt.Sprintf("this node has no free address and no reachable peer has any to give; "+
			"%d free addresses are held by nodes that are not reachable (weft rmpeer NODE reclaims a dead node's)", total)}
	}
	now := a.cfg.Now()
	silent := func(p string) bool { t, ok := a.silent[p]; return ok && now.Sub(t) < silentFor }
	slices.SortFunc(donors, func(x, y string) int {
		if sx, sy := silent(x), silent(y); sx != sy {
			if sx {
				return 1
			}
			return -1
		}
		if zx, zy := counts[x] == 0, counts[y] == 0; zx != zy {
			if zx {
				return 1
			}
			return -1
		}
		if c := cmp.Compare(counts[y], counts[x]); c != 0 {
			return c
		}
		return strings.Compare(x, y)
	})
	return donors, nil
}

// blockedPeersLocked names the peers whose last request is still being
// sent, sorted. Callers hold a.mu.
func (a *Allocator) blockedPeersLocked() []string {
	var out []string
	for p, n := range a.sending {
		if n > 0 {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// seek runs one donation round over donors (best first) and records its
// outcome; it ends when a donor gave space, every donor asked has answered
// or timed out, or the allocator stops.
func (a *Allocator) seek(donors []string) {
	results := make(chan askResult, len(donors))
	hedge := time.NewTimer(0)
	defer hedge.Stop()
	next, pending := 0, 0
	var silent, refused []string
	gave := false
	for !gave && (next < len(donors) || pending > 0) {
		select {
		case <-a.bgCtx.Done():
			pending = 0
			next = len(donors)
		case <-hedge.C:
			if next < len(donors) {
				a.ask(donors[next], results)
				next, pending = next+1, pending+1
				hedge.Reset(a.hedgeDelay())
			}
		case r := <-results:
			pending--
			switch {
			case r.gave:
				gave = true
			case r.answered:
				refused = append(refused, r.peer)
			default:
				silent = append(silent, r.peer)
			}
			if !r.gave && next < len(donors) {
				hedge.Reset(0) // ask the next donor at once
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seeking = false
	if !gave {
		why := fmt.Sprintf("this node has no free address and no peer gave a share: asked %s", strings.Join(donors[:next], ", "))
		if len(silent) > 0 {
			why += fmt.Sprintf("; %s did not answer within %s", strings.Join(silent, ", "), a.cfg.RequestTimeout)
		}
		if len(refused) > 0 {
			why += fmt.Sprintf("; %s had no block to give", strings.Join(refused, ", "))
		}
		a.seekErr = noSpaceError{why}
	}
	a.rounds++
	a.wakeLocked()
}

// ask sends one donation request to peer and reports the outcome on
// results (buffered by the caller) within RequestTimeout, even when the
// send itself blocks longer.
func (a *Allocator) ask(peer string, results chan<- askResult) {
	a.mu.Lock()
	a.nextID++
	id, answer := a.nextID, make(chan bool, 1)
	a.waiting[id] = answer
	a.sending[peer]++
	a.mu.Unlock()

	sent := make(chan error, 1)
	a.bg.Add(2)
	go func() {
		defer a.bg.Done()
		msg, _ := json.Marshal(message{V: msgVersion, Type: msgRequest, ID: id})
		ctx, cancel := context.WithTimeout(a.bgCtx, a.cfg.RequestTimeout)
		err := a.cfg.Transport.Send(ctx, peer, msg)
		cancel()
		a.mu.Lock()
		a.sending[peer]--
		if a.sending[peer] == 0 {
			delete(a.sending, peer)
		}
		a.mu.Unlock()
		sent <- err
	}()
	go func() {
		defer a.bg.Done()
		a.log.Info("asking a peer for addresses", "peer", peer)
		r := askResult{peer: peer}
		timeout := time.NewTimer(a.cfg.RequestTimeout)
		defer timeout.Stop()
	wait:
		for {
			select {
			case r.gave = <-answer:
				r.answered = true
				break wait
			case err := <-sent:
				sent = nil
				if err != nil {
					a.log.Warn("cannot ask a peer for addresses", "peer", peer, "err", err)
					break wait
				}
			case <-timeout.C:
				a.log.Warn("no donation from peer in time", "peer", peer, "timeout", a.cfg.RequestTimeout)
				break wait
			case <-a.bgCtx.Done():
				break wait
			}
		}
		a.mu.Lock()
		delete(a.waiting, id)
		if r.answered {
			delete(a.silent, peer)
		} else if a.bgCtx.Err() == nil {
			a.silent[peer] = a.cfg.Now()
		}
		a.mu.Unlock()
		results <- r
	}()
}
