package tests

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/ipalloc"
	"github.com/weftnet/weft/netlab"
)

// daemonAPI is a client of the daemon's local API on n.
func daemonAPI(n *netlab.Node) *api.Client { return api.NewClient(n.SocketPath(), 10*time.Second) }

func ipamStatus(ctx context.Context, n *netlab.Node) (ipalloc.Status, error) {
	var st ipalloc.Status
	err := daemonAPI(n).Do(ctx, http.MethodGet, api.PathStatus+"/ipam", nil, &st)
	return st, err
}

// allocate asks the daemon of n for the address of container id, eth0.
func allocate(ctx context.Context, n *netlab.Node, id string) (netip.Addr, error) {
	var al api.Allocation
	err := daemonAPI(n).Do(ctx, http.MethodPost, api.PathCNIAllocate, api.Attachment{ContainerID: id, IfName: "eth0"}, &al)
	if err != nil {
		return netip.Addr{}, err
	}
	return al.Address.Addr(), nil
}

// isRetryable tells whether the daemon asked to retry later (waiting for
// the ring or a donation), as the CNI runtime would.
func isRetryable(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == api.CodeNotReady
}

// allocateRetry is allocate, retried while the daemon says not ready; it
// returns how many times it had to retry.
func allocateRetry(ctx context.Context, n *netlab.Node, id string) (netip.Addr, int, error) {
	for retries := 0; ; retries++ {
		a, err := allocate(ctx, n, id)
		if err == nil || !isRetryable(err) {
			return a, retries, err
		}
		select {
		case <-ctx.Done():
			return netip.Addr{}, retries, fmt.Errorf("allocate %s on %s: %w (last: %v)", id, n.Name, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// allocBatch is the outcome of allocateMany.
type allocBatch struct {
	addrs   map[string]netip.Addr // container ID -> address
	retries int
	took    time.Duration
}

// allocateMany allocates count addresses on n for container IDs
// prefix-0..prefix-(count-1), workers at a time.
func allocateMany(ctx context.Context, n *netlab.Node, prefix string, count, workers int) (allocBatch, error) {
	start := time.Now()
	b := allocBatch{addrs: map[string]netip.Addr{}}
	var mu sync.Mutex
	var errs []error
	ids := make(chan string)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for id := range ids {
				a, r, err := allocateRetry(ctx, n, id)
				mu.Lock()
				b.retries += r
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", id, err))
				} else {
					b.addrs[id] = a
				}
				mu.Unlock()
			}
		})
	}
	for i := range count {
		ids <- fmt.Sprintf("%s-%d", prefix, i)
	}
	close(ids)
	wg.Wait()
	b.took = time.Since(start)
	return b, errors.Join(errs...)
}

// ring is one node's view of who owns what: owner -> CIDRs.
type ring map[string][]netip.Prefix

func ringOf(st ipalloc.Status) ring {
	r := ring{}
	for _, ns := range st.Nodes {
		if len(ns.Ranges) > 0 {
			r[ns.Name] = slices.Clone(ns.Ranges)
		}
	}
	return r
}

func (r ring) String() string {
	var owners []string
	for o := range r {
		owners = append(owners, o)
	}
	slices.Sort(owners)
	var b strings.Builder
	for _, o := range owners {
		ps := make([]string, len(r[o]))
		for i, p := range r[o] {
			ps[i] = p.String()
		}
		slices.Sort(ps)
		fmt.Fprintf(&b, "%s=%s ", o, strings.Join(ps, ","))
	}
	return strings.TrimSpace(b.String())
}

// ownerOf is the owner of addr in r, "" if none.
func (r ring) ownerOf(addr netip.Addr) string {
	for o, ps := range r {
		for _, p := range ps {
			if p.Contains(addr) {
				return o
			}
		}
	}
	return ""
}

// owners are the owners in r of any address of p.
func (r ring) owners(p netip.Prefix) []string {
	var out []string
	for o, ps := range r {
		for _, q := range ps {
			if q.Overlaps(p) {
				out = append(out, o)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

func v4(a netip.Addr) uint64 {
	b := a.As4()
	return uint64(binary.BigEndian.Uint32(b[:]))
}

func prefixSize(p netip.Prefix) uint64 { return 1 << (32 - p.Bits()) }

// checkRing checks st's ring: no address owned twice and, once seeded,
// every address of the range owned by someone.
func checkRing(st ipalloc.Status) error {
	type span struct {
		start, end uint64
		owner      string
	}
	var spans []span
	var total uint64
	for _, ns := range st.Nodes {
		for _, p := range ns.Ranges {
			if !st.Range.Contains(p.Addr()) || p.Bits() < st.Range.Bits() {
				return fmt.Errorf("%s owns %s, outside the range %s", ns.Name, p, st.Range)
			}
			s := v4(p.Masked().Addr())
			spans = append(spans, span{s, s + prefixSize(p), ns.Name})
			total += prefixSize(p)
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			return fmt.Errorf("an address is owned twice: %s and %s overlap", spans[i-1].owner, spans[i].owner)
		}
	}
	if st.Genesis != "" && total != prefixSize(st.Range) {
		return fmt.Errorf("the ring covers %d of the %d addresses of %s", total, prefixSize(st.Range), st.Range)
	}
	return nil
}

// waitRings waits until every node's ring is the same and valid, and
// returns it.
func waitRings(t *testing.T, ctx context.Context, nodes []*netlab.Node) ring {
	t.Helper()
	var r ring
	poll(t, ctx, func() error {
		var first string
		for i, n := range nodes {
			st, err := ipamStatus(ctx, n)
			if err != nil {
				return fmt.Errorf("%s: %w", n.Name, err)
			}
			if err := checkRing(st); err != nil {
				return fmt.Errorf("ring of %s: %w", n.Name, err)
			}
			if len(st.PendingClaims) > 0 {
				return fmt.Errorf("%s has pending claims: %+v", n.Name, st.PendingClaims)
			}
			cur := ringOf(st)
			if i == 0 {
				r, first = cur, cur.String()
			} else if s := cur.String(); s != first {
				return fmt.Errorf("rings differ:\n  %s: %s\n  %s: %s", nodes[0].Name, first, n.Name, s)
			}
		}
		return nil
	})
	return r
}

// waitState waits until n sees every node of others in the given state
// (alive or down; a peer whose tunnel is gone counts as down).
func waitState(t *testing.T, ctx context.Context, n *netlab.Node, others []*netlab.Node, state string) {
	t.Helper()
	poll(t, ctx, func() error {
		st, err := peersStatus(ctx, n)
		if err != nil {
			return err
		}
		for _, o := range others {
			p, ok := peerOf(st, o.Name)
			got := p.State
			if !ok {
				got = "down"
			}
			if got != state {
				return fmt.Errorf("%s sees %s %s, want %s", n.Name, o.Name, got, state)
			}
		}
		return nil
	})
}

// waitUnreachable waits until the allocator of every node of nodes sees
// dead as unreachable (what rmpeer requires).
func waitUnreachable(t *testing.T, ctx context.Context, nodes []*netlab.Node, dead string) {
	t.Helper()
	poll(t, ctx, func() error {
		for _, n := range nodes {
			st, err := ipamStatus(ctx, n)
			if err != nil {
				return err
			}
			for _, ns := range st.Nodes {
				if ns.Name == dead && ns.Reachable {
					return fmt.Errorf("%s still sees %s reachable", n.Name, dead)
				}
			}
		}
		return nil
	})
}

// rmpeer asks n's daemon to reclaim dead's ranges and returns its message.
func rmpeer(ctx context.Context, n *netlab.Node, dead string) (string, error) {
	var out struct {
		Message string `json:"message"`
	}
	err := daemonAPI(n).Do(ctx, http.MethodPost, api.PathRmpeer, map[string]string{"node": dead}, &out)
	return out.Message, err
}

// distinct fails t if two keys of any batch share an address, and returns
// every address with its key.
func distinct(t *testing.T, batches ...map[string]netip.Addr) map[netip.Addr]string {
	t.Helper()
	seen := map[netip.Addr]string{}
	for _, b := range batches {
		for k, a := range b {
			if other, dup := seen[a]; dup && other != k {
				t.Errorf("address %s was handed out twice: to %s and to %s", a, other, k)
			}
			seen[a] = k
		}
	}
	return seen
}
