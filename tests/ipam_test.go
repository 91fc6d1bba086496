package tests

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// smallRange is a pod range small enough that a node of three runs out of
// its third and needs a donation: 1024 addresses, about 340 per node.
var smallRange = netip.MustParsePrefix("10.32.0.0/22")

// allocateOnAll runs allocateMany on every node at once, count[i] on
// nodes[i], with container IDs <phase>-<node>-<i>.
func allocateOnAll(t *testing.T, ctx context.Context, nodes []*netlab.Node, phase string, count []int) map[string]map[string]netip.Addr {
	t.Helper()
	out := map[string]map[string]netip.Addr{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, n := range nodes {
		if count[i] == 0 {
			continue
		}
		wg.Go(func() {
			b, err := allocateMany(ctx, n, phase+"-"+n.Name, count[i], 10)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("%s: %d of %d allocations on %s failed: %v", phase, count[i]-len(b.addrs), count[i], n.Name, err)
			}
			out[n.Name] = b.addrs
			t.Logf("%s: %d allocations on %s in %v (%.0f/s, %d retries while not ready)",
				phase, len(b.addrs), n.Name, b.took.Round(time.Millisecond), float64(len(b.addrs))/b.took.Seconds(), b.retries)
		})
	}
	wg.Wait()
	return out
}

func freeOf(t *testing.T, ctx context.Context, n *netlab.Node) uint64 {
	t.Helper()
	st, err := ipamStatus(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range st.Nodes {
		if ns.Name == n.Name {
			return ns.Free
		}
	}
	return 0
}

// Three nodes allocate 300 addresses, a partition cuts node3 off while both
// sides allocate 300 more (one node of the majority side more than it owns,
// so that the other must donate to it), the partition heals: the 600 addresses are
// distinct, each still owned by the node that handed it out, and every
// node has the same ring.
func TestIPAMPartitionAllocateHeal(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 3, "--pod-cidr", smallRange.String())
	before := waitRings(t, ctx, nodes)
	t.Logf("ring at start: %s", before)

	phase1 := allocateOnAll(t, ctx, nodes, "before", []int{100, 100, 100})
	if t.Failed() {
		t.FailNow()
	}

	left, right := nodes[:2], nodes[2:]
	if err := lab.CutGroups(left, right); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	for _, n := range left {
		waitState(t, ctx, n, right, "down")
	}
	waitState(t, ctx, right[0], left, "down")
	t.Logf("partition seen by every node after %v", time.Since(cut).Round(time.Millisecond))

	// The node of the majority side with less space left asks for more
	// than it has, so that it needs a donation from the other during the
	// partition; 300 in all, 50 of them on node3.
	needy, giver := 0, 1
	free := []uint64{freeOf(t, ctx, nodes[0]), freeOf(t, ctx, nodes[1])}
	if free[1] < free[0] {
		needy, giver = 1, 0
	}
	count := make([]int, 3)
	count[2] = 50
	count[needy] = int(free[needy]) + 20
	count[giver] = 300 - count[needy] - count[2]
	if count[giver] < 0 {
		t.Fatalf("%s has %d free addresses, too many for this test (ring %s)", nodes[needy].Name, free[needy], before)
	}
	t.Logf("during the partition: %v allocations; %s has %d free and needs a donation", count, nodes[needy].Name, free[needy])
	during := allocateOnAll(t, ctx, nodes, "during", count)
	if t.Failed() {
		t.FailNow()
	}

	if err := lab.HealGroups(left, right); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	waitMesh(t, ctx, nodes)
	final := waitRings(t, ctx, nodes)
	t.Logf("after healing: mesh and rings converged in %v; ring: %s", time.Since(healed).Round(time.Millisecond), final)

	var all []map[string]netip.Addr
	byNode := map[string]map[string]netip.Addr{}
	for _, phase := range []map[string]map[string]netip.Addr{phase1, during} {
		for node, b := range phase {
			all = append(all, b)
			if byNode[node] == nil {
				byNode[node] = map[string]netip.Addr{}
			}
			for k, a := range b {
				byNode[node][k] = a
			}
		}
	}
	seen := distinct(t, all...)
	if len(seen) != 600 {
		t.Errorf("%d distinct addresses, want 600", len(seen))
	}
	donated := 0
	for node, b := range byNode {
		for k, a := range b {
			if !smallRange.Contains(a) {
				t.Errorf("%s got %s, outside %s", k, a, smallRange)
			}
			if o := final.ownerOf(a); o != node {
				t.Errorf("%s (%s) was handed out by %s but the ring gives it to %q", a, k, node, o)
			}
			if node == nodes[needy].Name && before.ownerOf(a) != node {
				donated++
			}
		}
	}
	if donated == 0 {
		t.Errorf("%s allocated %d addresses in all and none came from a donation", nodes[needy].Name, len(byNode[nodes[needy].Name]))
	}
	t.Logf("%s allocated %d addresses from space donated to it", nodes[needy].Name, donated)

	// Every node still answers every key with the address it gave.
	for _, n := range nodes {
		st, err := ipamStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if want := len(byNode[n.Name]) + 2; st.Allocations != want {
			t.Errorf("%s holds %d allocations, want %d (its pods and its tunnel and probe addresses)", n.Name, st.Allocations, want)
		}
		for k, a := range byNode[n.Name] {
			got, err := allocate(ctx, n, k)
			if err != nil || got != a {
				t.Errorf("allocate %s again on %s: %s, %v; want %s", k, n.Name, got, err, a)
			}
		}
	}
}

// kill -9 of a daemon in the middle of a burst of allocations: after a
// restart from the same state dir, every address returned before the kill
// still belongs to its key and none is handed to another key.
func TestIPAMKillDuringBurst(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 2)
	victim := nodes[1]

	const workers = 8
	var mu sync.Mutex
	returned := map[string]netip.Addr{}
	var unknown []string // in flight at the kill: allocated or not
	killAt := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("burst-%d-%d", w, i)
				a, err := allocate(ctx, victim, id)
				mu.Lock()
				if err != nil {
					unknown = append(unknown, id)
					mu.Unlock()
					return
				}
				returned[id] = a
				if len(returned) == 150 {
					close(killAt)
				}
				mu.Unlock()
			}
		})
	}
	select {
	case <-killAt:
	case <-ctx.Done():
		t.Fatal("the burst did not reach 150 allocations")
	}
	if err := victim.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	t.Logf("killed %s after %d allocations returned; %d requests in flight", victim.Name, len(returned), len(unknown))

	if err := victim.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	if err := victim.WaitSocket(ctx); err != nil {
		t.Fatal(err)
	}
	keys := 0
	for id, a := range returned {
		got, _, err := allocateRetry(ctx, victim, id)
		if err != nil {
			t.Fatalf("allocate %s after the restart: %v", id, err)
		}
		if keys == 0 {
			t.Logf("first allocation served %v after the restart", time.Since(restarted).Round(time.Millisecond))
		}
		keys++
		if got != a {
			t.Errorf("%s had %s before the kill and %s after", id, a, got)
		}
	}
	after := map[string]netip.Addr{}
	for _, id := range unknown {
		a, _, err := allocateRetry(ctx, victim, id)
		if err != nil {
			t.Fatal(err)
		}
		after[id] = a
	}
	b, err := allocateMany(ctx, victim, "after", 100, 8)
	if err != nil {
		t.Fatal(err)
	}
	seen := distinct(t, returned, after, b.addrs)
	st, err := ipamStatus(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(seen) + 2; st.Allocations != want {
		t.Errorf("%s holds %d allocations after the restart, want %d (one per key and its tunnel and probe addresses)", victim.Name, st.Allocations, want)
	}
	// Nothing the survivor hands out collides either.
	other, err := allocateMany(ctx, nodes[0], "survivor", 50, 8)
	if err != nil {
		t.Fatal(err)
	}
	distinct(t, returned, after, b.addrs, other.addrs)
}

// reclaimRace meshes three nodes on a /24 (node1 owns half, node2 and
// node3 a quarter each), lets node3 allocate, kills it, waits until both
// survivors see it gone, and runs rmpeer of it on both at once. It returns
// the survivors and node3's former ranges.
func reclaimRace(t *testing.T, ctx context.Context, lab *netlab.Lab) (dead *netlab.Node, survivors []*netlab.Node, former []netip.Prefix) {
	t.Helper()
	podRange := netip.MustParsePrefix("10.32.0.0/24")
	nodes, _ := meshOf(t, ctx, lab, 3, "--pod-cidr", podRange.String())
	dead, survivors = nodes[2], nodes[:2]
	if _, err := allocateMany(ctx, dead, "dead", 20, 4); err != nil {
		t.Fatal(err)
	}
	start := waitRings(t, ctx, nodes)
	former = start[dead.Name]
	if len(former) == 0 {
		t.Fatalf("%s owns nothing", dead.Name)
	}
	t.Logf("ring at start: %s", start)

	if err := dead.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	for _, n := range survivors {
		waitState(t, ctx, n, []*netlab.Node{dead}, "down")
	}
	waitUnreachable(t, ctx, survivors, dead.Name)
	t.Logf("%s seen unreachable by both survivors %v after kill -9", dead.Name, time.Since(killed).Round(time.Millisecond))

	msgs := make([]string, len(survivors))
	errs := make([]error, len(survivors))
	var wg sync.WaitGroup
	startGun := make(chan struct{})
	for i, n := range survivors {
		wg.Go(func() {
			<-startGun
			msgs[i], errs[i] = rmpeer(ctx, n, dead.Name)
		})
	}
	close(startGun)
	wg.Wait()
	for i, n := range survivors {
		if errs[i] != nil {
			t.Fatalf("rmpeer %s on %s: %v", dead.Name, n.Name, errs[i])
		}
		t.Logf("rmpeer on %s: %s", n.Name, msgs[i])
	}
	return dead, survivors, former
}

// rmpeer of a dead node on two nodes at once: exactly one owner of its
// former ranges on every ring, and a second rmpeer is a no-op.
func TestIPAMRmpeerTwiceAtOnce(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dead, survivors, former := reclaimRace(t, ctx, lab)
	raced := time.Now()
	final := waitRings(t, ctx, survivors)
	t.Logf("rings converged and claims confirmed %v after the two reclaims: %s", time.Since(raced).Round(time.Millisecond), final)
	if ps := final[dead.Name]; len(ps) > 0 {
		t.Errorf("%s still owns %v", dead.Name, ps)
	}
	var winners []string
	for _, o := range survivors {
		if owned(final, o.Name, former) {
			winners = append(winners, o.Name)
		}
	}
	if len(winners) != 1 {
		t.Errorf("%s's former ranges %v went to %v, want all to one node: %s", dead.Name, former, winners, final)
	}

	for _, n := range survivors {
		msg, err := rmpeer(ctx, n, dead.Name)
		if err != nil {
			t.Errorf("second rmpeer on %s: %v", n.Name, err)
			continue
		}
		if !strings.Contains(msg, "nothing to reclaim") {
			t.Errorf("second rmpeer on %s should say it is a no-op; said %q", n.Name, msg)
		}
		t.Logf("second rmpeer on %s: %s", n.Name, msg)
	}
	if again := waitRings(t, ctx, survivors); again.String() != final.String() {
		t.Errorf("the second rmpeer changed the ring:\n  %s\n  %s", final, again)
	}

	// node1 allocates beyond what it owns: from the reclaimed space if it
	// won, by donation otherwise.
	got := allocateOnAll(t, ctx, survivors, "after", []int{int(freeOf(t, ctx, survivors[0])) + 10, 0})
	distinct(t, got[survivors[0].Name])
}

// Both survivors allocate more than they own right after the reclaim race,
// while the claims wait for confirmation: a claimant that lost the race
// must never use the dead node's space, every allocation must succeed (the
// range has room: the dead node's quarter), and nothing is handed out
// twice.
func TestIPAMAllocateDuringReclaim(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, survivors, _ := reclaimRace(t, ctx, lab)
	raced := time.Now()
	// Each survivor asks for 20 more than it has free: 40 of the dead
	// node's 64 addresses.
	count := make([]int, len(survivors))
	for i, n := range survivors {
		count[i] = int(freeOf(t, ctx, n)) + 20
	}
	got := allocateOnAll(t, ctx, survivors, "during", count)
	final := waitRings(t, ctx, survivors)
	t.Logf("rings converged %v after the two reclaims: %s", time.Since(raced).Round(time.Millisecond), final)
	distinct(t, got[survivors[0].Name], got[survivors[1].Name])
	for node, b := range got {
		for k, a := range b {
			if o := final.ownerOf(a); o != node {
				t.Errorf("%s handed out %s (%s), which the ring gives to %q", node, a, k, o)
			}
		}
	}
}

// owned tells whether every prefix of ps lies in node's ranges of r.
func owned(r ring, node string, ps []netip.Prefix) bool {
	for _, p := range ps {
		if o := r.owners(p); len(o) != 1 || o[0] != node {
			return false
		}
	}
	return true
}

// A node stopped, reclaimed, and started again with its old state serves
// nothing from its old ranges, and the rings converge.
func TestIPAMStaleStateAfterReclaim(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 3)
	stale, others := nodes[2], nodes[:2]
	old, err := allocateMany(ctx, stale, "old", 20, 4)
	if err != nil {
		t.Fatal(err)
	}
	oldRanges := waitRings(t, ctx, nodes)[stale.Name]
	oldTunnel, err := peersStatus(ctx, stale)
	if err != nil {
		t.Fatal(err)
	}

	if err := stale.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	waitUnreachable(t, ctx, others, stale.Name)
	msg, err := rmpeer(ctx, others[0], stale.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rmpeer on %s: %s", others[0].Name, msg)
	reclaimed := waitRings(t, ctx, others)
	if !owned(reclaimed, others[0].Name, oldRanges) {
		t.Fatalf("after rmpeer the old ranges %v are not %s's: %s", oldRanges, others[0].Name, reclaimed)
	}

	// Start it again with its old state and ask it for addresses, old keys
	// and new, from the first moment on.
	if err := stale.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	var bad []string
	served := map[string]netip.Addr{}
	var firstServed time.Duration
	keys := make([]string, 0, 40)
	for k := range old.addrs {
		keys = append(keys, k)
	}
	for i := range 20 {
		keys = append(keys, fmt.Sprintf("new-%d", i))
	}
	for _, k := range keys {
		for {
			a, err := allocate(ctx, stale, k)
			if err == nil {
				if firstServed == 0 {
					firstServed = time.Since(restarted)
				}
				served[k] = a
				for _, p := range oldRanges {
					if p.Contains(a) {
						bad = append(bad, fmt.Sprintf("%s -> %s (in %s)", k, a, p))
					}
				}
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("allocate %s on the restarted %s: %v\n%s", k, stale.Name, err, stale.LogTail(30))
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	if len(bad) > 0 {
		t.Errorf("the restarted node served %d addresses from its reclaimed ranges: %s", len(bad), strings.Join(bad, "; "))
	}
	t.Logf("the restarted node served its first address %v after start", firstServed.Round(time.Millisecond))

	final := waitRings(t, ctx, nodes)
	t.Logf("rings: %s", final)
	if !owned(final, others[0].Name, oldRanges) {
		t.Errorf("the old ranges %v of %s are not %s's any more: %s", oldRanges, stale.Name, others[0].Name, final)
	}
	for k, a := range served {
		if o := final.ownerOf(a); o != stale.Name {
			t.Errorf("%s got %s from %s, which the ring gives to %q", k, a, stale.Name, o)
		}
	}
	all := distinct(t, served)
	if len(all) != len(keys) {
		t.Errorf("%d keys got %d distinct addresses", len(keys), len(all))
	}
	// The tunnel address was in the old ranges too: the node must take a
	// new one and mesh again.
	addrs := waitMesh(t, ctx, nodes)
	if tun := addrs[stale.Name]; final.ownerOf(tun) != stale.Name {
		t.Errorf("the restarted node's tunnel address %s (was %s) is owned by %q", tun, oldTunnel.TunnelAddr, final.ownerOf(tun))
	}
	st, err := ipamStatus(ctx, stale)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(keys) + 2; st.Allocations != want { // and the node's tunnel and probe addresses
		t.Errorf("the restarted node holds %d allocations, want %d (old allocations in lost ranges dropped)", st.Allocations, want)
	}
}

// A node out of space whose best donor is cut off from it (an asymmetric
// partition: its packets are dropped, not refused, and both still reach a
// third node, so the mesh keeps the donor alive) gets space from the
// reachable peer. Pods are added through libcni as a runtime would,
// retrying a failed ADD: every ADD is answered within the plugin's
// deadline (a retryable error at worst, never a timeout), all pods start
// within 30 s from the reachable donor's space, the silent donor is asked
// at most twice, and nothing is handed out twice.
func TestIPAMDonorUnreachable(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 3, "--pod-cidr", smallRange.String())
	before := waitRings(t, ctx, nodes)
	t.Logf("ring at start: %s", before)
	// The needy node is the one with the least free space; its best donor
	// the one with the most, and the third node the one that stays
	// reachable.
	st, err := ipamStatus(ctx, nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	var needy, donor *netlab.Node
	var least, most uint64
	for _, ns := range st.Nodes {
		if needy == nil || ns.Free < least {
			needy, least = lab.Node(ns.Name), ns.Free
		}
		if donor == nil || ns.Free > most {
			donor, most = lab.Node(ns.Name), ns.Free
		}
	}
	var reachable *netlab.Node
	for _, n := range nodes {
		if n != needy && n != donor {
			reachable = n
		}
	}
	if needy == donor || reachable == nil {
		t.Fatalf("cannot tell the needy node, the best donor and the third apart in %+v", st.Nodes)
	}
	// Use up the needy node's own space; no donation needed yet.
	own, err := allocateMany(ctx, needy, "own", int(freeOf(t, ctx, needy)), 4)
	if err != nil {
		t.Fatal(err)
	}
	if f := freeOf(t, ctx, needy); f != 0 {
		t.Fatalf("%s still has %d free addresses", needy.Name, f)
	}
	if err := lab.Cut(needy, donor); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s (full after %d allocations) is cut from %s (%d free); adding pods on %s", needy.Name, len(own.addrs), donor.Name, most, needy.Name)

	// The plugin gives the daemon 5 s; an ADD that took that long was not
	// answered in time.
	const count, pluginDeadline = 5, 5 * time.Second
	pods := make([]*netlab.Pod, count)
	attempts := make([]int, count)
	lastErr := make([]error, count)
	var mu sync.Mutex
	var slowest time.Duration
	var late []string
	start := time.Now()
	deadline, cancelDeadline := context.WithTimeout(ctx, 30*time.Second)
	defer cancelDeadline()
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			for deadline.Err() == nil {
				attempts[i]++
				t0 := time.Now()
				p, err := needy.AddPod(ctx, netlab.PodConfig{Name: fmt.Sprintf("needy%d-try%d", i, attempts[i])})
				took := time.Since(t0)
				mu.Lock()
				slowest = max(slowest, took)
				if took >= pluginDeadline || (err != nil && strings.Contains(err.Error(), "did not answer")) {
					late = append(late, fmt.Sprintf("pod %d try %d: %v (%v)", i, attempts[i], took.Round(time.Millisecond), err))
				}
				mu.Unlock()
				if err == nil {
					pods[i] = p
					return
				}
				lastErr[i] = err
			}
		})
	}
	wg.Wait()
	podAddrs := map[string]netip.Addr{}
	for i, p := range pods {
		if p == nil {
			t.Errorf("pod %d did not start in 30 s on %s with %s cut off (%d ADDs); last error: %v", i, needy.Name, donor.Name, attempts[i], lastErr[i])
			continue
		}
		podAddrs[p.Name] = p.IP()
		if o := before.ownerOf(p.IP()); o != reachable.Name {
			t.Errorf("pod %s got %s, which %q owned before, want space from the reachable donor %s", p.Name, p.IP(), o, reachable.Name)
		}
	}
	t.Logf("%d of %d pods started in %v; ADD attempts per pod %v; slowest ADD %v", len(podAddrs), count,
		time.Since(start).Round(time.Millisecond), attempts, slowest.Round(time.Millisecond))
	for _, l := range late {
		t.Errorf("an ADD was not answered within the plugin's deadline of %v: %s", pluginDeadline, l)
	}
	asked := 0
	for _, line := range strings.Split(needy.Log(), "\n") {
		if strings.Contains(line, `msg="asking a peer for addresses"`) && slices.Contains(strings.Fields(line), "peer="+donor.Name) {
			asked++
		}
	}
	t.Logf("%s asked the unreachable %s %d times", needy.Name, donor.Name, asked)
	if asked > 2 {
		t.Errorf("%s asked the silent %s %d times in 30 s, want at most 2: it should remember silent donors", needy.Name, donor.Name, asked)
	}
	other, err := allocateMany(ctx, donor, "donor", 50, 4)
	if err != nil {
		t.Fatal(err)
	}

	if err := lab.Heal(needy, donor); err != nil {
		t.Fatal(err)
	}
	waitMesh(t, ctx, nodes)
	final := waitRings(t, ctx, nodes)
	t.Logf("ring after healing: %s", final)
	distinct(t, own.addrs, podAddrs, other.addrs)
	for node, batch := range map[string][]map[string]netip.Addr{needy.Name: {own.addrs, podAddrs}, donor.Name: {other.addrs}} {
		for _, b := range batch {
			for k, a := range b {
				if o := final.ownerOf(a); o != node {
					t.Errorf("%s handed out %s (%s), which the ring gives to %q", node, a, k, o)
				}
			}
		}
	}
}
