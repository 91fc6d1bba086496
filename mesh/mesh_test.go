package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

const converge = 15 * time.Second // generous deadline for gossip to converge

func TestMembershipEventsAndLeave(t *testing.T) {
	before := runtime.NumGoroutine()
	n1 := startNode(t, testConfig(t, "n1"))
	n2 := startNode(t, testConfig(t, "n2", n1.addr()))
	n3 := startNode(t, testConfig(t, "n3", n1.addr()))
	nodes := []*node{n1, n2, n3}
	waitFullMesh(t, converge, nodes...)

	for _, n := range nodes {
		for _, p := range n.Members() {
			if p.State != StateAlive || p.Meta.Name != p.Name || p.Meta.Endpoint != "127.0.0.1:6784" || p.Meta.PublicKey != testKey(byte(len(p.Name))) {
				t.Errorf("%s sees member %+v: want alive with its metadata", n.cfg.NodeName, p)
			}
			if evs := n.eventsFor(p.Name); evs[0].Type != EventJoin {
				t.Errorf("%s: first event for %s is %v, want join", n.cfg.NodeName, p.Name, evs[0].Type)
			}
		}
		if evs := n.eventsFor(n.cfg.NodeName); len(evs) != 0 {
			t.Errorf("%s got events about itself: %v", n.cfg.NodeName, evs)
		}
		if h := n.Health(); h.Members != 2 {
			t.Errorf("%s: Health().Members = %d, want 2", n.cfg.NodeName, h.Members)
		}
		if l := n.Local(); l.Name != n.cfg.NodeName || l.Addr.String() != n.addr() || l.Meta.Proto != ProtoVersion {
			t.Errorf("Local() = %+v", l)
		}
	}

	t.Run("meta update", func(t *testing.T) {
		meta := n2.Local().Meta
		meta.Endpoint = "192.0.2.2:6784"
		if err := n2.SetMeta(meta); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*node{n1, n3} {
			waitFor(t, converge, n.cfg.NodeName+" to see n2's update", func() bool {
				ev, ok := n.lastEvent("n2")
				return ok && ev.Type == EventUpdate && ev.Peer.Meta.Endpoint == "192.0.2.2:6784"
			})
		}
		if err := n2.SetMeta(Meta{Name: "other"}); err == nil {
			t.Error("SetMeta with another node's name succeeded")
		}
	})

	t.Run("graceful leave", func(t *testing.T) {
		n3.stop(t)
		for _, n := range []*node{n1, n2} {
			waitFor(t, converge, n.cfg.NodeName+" to see n3 leave", func() bool {
				// Left normally; Dead when the UDP notice of the leave was
				// lost (it is best effort) and probing found the node gone.
				ev, ok := n.lastEvent("n3")
				return ok && ev.Type == EventLeave && (ev.Peer.State == StateLeft || ev.Peer.State == StateDead)
			})
			if slices.Contains(n.memberNames(), "n3") {
				t.Errorf("%s still lists n3 after its Leave event", n.cfg.NodeName)
			}
		}
		if _, ok := <-n3.Events(); ok {
			t.Error("Events channel not closed after Run returned")
		}
		if st := n3.Local().State; st != StateLeft {
			t.Errorf("n3.Local().State = %v after Run returned, want left", st)
		}
	})

	// No goroutine of the meshes outlives Run.
	n1.stop(t)
	n2.stop(t)
	checkGoroutines(t, before)
}

func TestDeadNodeDetected(t *testing.T) {
	n1 := startNode(t, testConfig(t, "n1"))
	n2 := startNode(t, testConfig(t, "n2", n1.addr()))
	n3 := startNode(t, testConfig(t, "n3", n1.addr()))
	waitFullMesh(t, converge, n1, n2, n3)

	// Shut n3 down without leaving, like kill -9.
	killed := time.Now()
	if err := n3.Close(); err != nil {
		t.Fatal(err)
	}
	limit := n1.cfg.FailureDetectionTime(3)
	for _, n := range []*node{n1, n2} {
		waitFor(t, converge, n.cfg.NodeName+" to declare n3 dead", func() bool {
			ev, ok := n.lastEvent("n3")
			return ok && ev.Type == EventLeave && ev.Peer.State == StateDead
		})
		took := time.Since(killed)
		t.Logf("%s declared n3 dead after %v (documented: %v)", n.cfg.NodeName, took.Round(time.Millisecond), limit)
		// Allow scheduling slack on a loaded test machine.
		if took > limit+time.Second {
			t.Errorf("%s declared n3 dead after %v, documented failure detection time is %v", n.cfg.NodeName, took, limit)
		}
	}
}

func TestWrongKeyNeverAdmitted(t *testing.T) {
	n1 := startNode(t, testConfig(t, "n1"))
	n2 := startNode(t, testConfig(t, "n2", n1.addr()))
	waitFullMesh(t, converge, n1, n2)

	badCfg := testConfig(t, "intruder", n1.addr(), n2.addr())
	badCfg.Key = make([]byte, KeySize) // another secret
	bad := startNode(t, badCfg)
	openCfg := testConfig(t, "insecure", n1.addr())
	openCfg.Key = nil
	open := startNode(t, openCfg)

	// Let the outsiders try many times, and the members push/pull.
	waitFor(t, converge, "outsiders to retry joining", func() bool {
		return bad.joinAttempts.Load() >= 12 && open.joinAttempts.Load() >= 6
	})
	for _, n := range []*node{n1, n2} {
		for _, name := range []string{"intruder", "insecure"} {
			if evs := n.eventsFor(name); len(evs) > 0 {
				t.Errorf("%s got events for %s: %v", n.cfg.NodeName, name, evs)
			}
		}
		if got := n.memberNames(); !slices.Equal(got, []string{map[string]string{"n1": "n2", "n2": "n1"}[n.cfg.NodeName]}) {
			t.Errorf("%s members = %v", n.cfg.NodeName, got)
		}
	}
	for _, n := range []*node{bad, open} {
		if got := n.memberNames(); len(got) != 0 {
			t.Errorf("%s sees members %v", n.cfg.NodeName, got)
		}
	}
	// The members' logs explain the rejection, without a line per packet.
	logs := n1.logs.String()
	if !strings.Contains(logs, "hint=") || !strings.Contains(logs, "secret") {
		t.Errorf("n1 logs do not explain the key mismatch:\n%s", logs)
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "hint=") && strings.Count(logs, line) > 1 {
			t.Errorf("key mismatch line repeated: %s", line)
		}
	}
	if l := bad.logs.String(); !strings.Contains(l, "cannot join any seed") || !strings.Contains(l, "secret") {
		t.Errorf("intruder logs do not say it cannot join:\n%s", l)
	}
}

func TestJoinBeforeSeedExists(t *testing.T) {
	port := freePort(t)
	seedCfg := testConfig(t, "seed")
	seedCfg.BindPort = port
	early := startNode(t, testConfig(t, "early", seedCfg.BindAddr+":"+strconv.Itoa(port)))
	waitFor(t, converge, "early node to retry a few times", func() bool { return early.joinAttempts.Load() >= 3 })
	if got := early.memberNames(); len(got) != 0 {
		t.Fatalf("early node has members %v before its seed exists", got)
	}
	seed := startNode(t, seedCfg)
	waitFullMesh(t, converge, seed, early)
}

func TestSeedComesBackMergesGroups(t *testing.T) {
	port := freePort(t)
	seedAddr := "127.0.0.1:" + strconv.Itoa(port)
	a1 := startNode(t, testConfig(t, "a1", seedAddr))
	a2 := startNode(t, testConfig(t, "a2", seedAddr, a1.addr()))
	b1 := startNode(t, testConfig(t, "b1", seedAddr))
	b2 := startNode(t, testConfig(t, "b2", seedAddr, b1.addr()))
	waitFullMesh(t, converge, a1, a2)
	waitFullMesh(t, converge, b1, b2)
	if slices.Contains(a1.memberNames(), "b1") {
		t.Fatal("groups met without their seed")
	}
	seedCfg := testConfig(t, "seed")
	seedCfg.BindPort = port
	seed := startNode(t, seedCfg)
	waitFullMesh(t, converge, seed, a1, a2, b1, b2)
}

func TestPartitionHeals(t *testing.T) {
	p := &partition{}
	cfg := func(name string, seeds ...string) Config {
		c := testConfig(t, name, seeds...)
		c.wrapTransport = p.wrap
		return c
	}
	s := startNode(t, cfg("s"))
	a1 := startNode(t, cfg("a1", s.addr()))
	a2 := startNode(t, cfg("a2", s.addr()))
	b1 := startNode(t, cfg("b1", s.addr()))
	b2 := startNode(t, cfg("b2", s.addr()))
	all := []*node{a1, a2, b1, b2}
	waitFullMesh(t, converge, append(all, s)...)

	// The seed goes away for good, so only the addresses of departed
	// members can bring the halves back together.
	s.stop(t)
	groupA, groupB := []*node{a1, a2}, []*node{b1, b2}
	p.set(true, groupA, groupB)
	waitSees := func(ns []*node, peers []*node, want EventType) {
		t.Helper()
		for _, n := range ns {
			for _, o := range peers {
				waitFor(t, converge, n.cfg.NodeName+" to see "+want.String()+" of "+o.cfg.NodeName, func() bool {
					ev, ok := n.lastEvent(o.cfg.NodeName)
					return ok && ev.Type == want
				})
			}
		}
	}
	waitSees(groupA, groupB, EventLeave)
	waitSees(groupB, groupA, EventLeave)
	if got := a1.memberNames(); !slices.Equal(got, []string{"a2"}) {
		t.Fatalf("a1 members during partition = %v, want [a2]", got)
	}

	p.set(false)
	waitFullMesh(t, converge, all...)
}

func TestRunStopsWhileJoining(t *testing.T) {
	// A node whose seed never answers must still stop promptly.
	n := newNode(t, testConfig(t, "lonely", "127.0.0.1:"+strconv.Itoa(freePort(t))))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	waitFor(t, converge, "join attempts", func() bool { return n.joinAttempts.Load() >= 2 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if err := n.Run(context.Background()); err == nil {
		t.Fatal("second Run succeeded")
	}
	closed := newNode(t, testConfig(t, "closed"))
	_ = closed.Close()
	if err := closed.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close = %v, want ErrClosed", err)
	}
}

// checkGoroutines waits until no more goroutines run than before.
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines running, %d before the test:\n%s", runtime.NumGoroutine(), before, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestInsecureMesh(t *testing.T) {
	c1 := testConfig(t, "n1")
	c1.Key = nil
	n1 := startNode(t, c1)
	c2 := testConfig(t, "n2", n1.addr())
	c2.Key = nil
	n2 := startNode(t, c2)
	waitFullMesh(t, converge, n1, n2)

	n2.stop(t)
	if err := n2.SetMeta(Meta{}); !errors.Is(err, ErrClosed) {
		t.Errorf("SetMeta after Run returned = %v, want ErrClosed", err)
	}
	if err := n2.SendTo("n1", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("SendTo after Run returned = %v, want ErrClosed", err)
	}
	if err := n2.Close(); err != nil {
		t.Errorf("Close after Run returned = %v", err)
	}
}

func TestSlowConsumerNeverBlocksGossip(t *testing.T) {
	// Drive memberlist's callbacks directly, far more often than the
	// Events buffer holds, while nobody reads: they must never block.
	n1 := newNode(t, testConfig(t, "n1"))
	const updates = 3 * eventBuffer
	var last Meta
	for i := range updates {
		last = Meta{Proto: ProtoVersion, Name: "n2", Endpoint: "192.0.2.1:" + strconv.Itoa(10000+i)}
		raw, err := last.Encode()
		if err != nil {
			t.Fatal(err)
		}
		ml := &memberlist.Node{Name: "n2", Addr: net.IPv4(192, 0, 2, 1), Port: 6783, Meta: raw}
		d := eventDelegate{n1.Mesh}
		if i == 0 {
			d.NotifyJoin(ml)
		} else {
			d.NotifyUpdate(ml)
		}
	}
	if ms := n1.Members(); len(ms) != 1 || ms[0].Meta != last {
		t.Fatalf("Members = %+v, want n2 with its last metadata", ms)
	}
	n1.run(t)
	waitFor(t, converge, "the last update event", func() bool {
		ev, ok := n1.lastEvent("n2")
		return ok && ev.Peer.Meta == last
	})
	evs := n1.eventsFor("n2")
	if evs[0].Type != EventJoin {
		t.Errorf("first event %v, want join", evs[0].Type)
	}
	if len(evs) >= updates || n1.Health().CoalescedEvents == 0 {
		t.Errorf("%d updates gave %d events, %d coalesced: want coalescing", updates, len(evs), n1.Health().CoalescedEvents)
	}
}

func TestBroadcastReachesEveryone(t *testing.T) {
	const n = 8
	nodes := []*node{startNode(t, testConfig(t, "b0"))}
	for i := 1; i < n; i++ {
		nodes = append(nodes, startNode(t, testConfig(t, "b"+strconv.Itoa(i), nodes[0].addr())))
	}
	waitFullMesh(t, converge, nodes...)
	for i, size := range []int{10, 3000} {
		msg := strings.Repeat(strconv.Itoa(i), size)
		nodes[3].Broadcast([]byte(msg))
		for _, o := range nodes {
			if o == nodes[3] {
				continue
			}
			waitFor(t, converge, o.cfg.NodeName+" to get the broadcast", func() bool {
				return o.app.received("b3: "+msg) == 1
			})
		}
	}
}

func TestRestartWithSameName(t *testing.T) {
	tests := []struct {
		name     string
		graceful bool
	}{
		{"after leaving", true},
		{"after a crash", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n1 := startNode(t, testConfig(t, "n1"))
			c2 := testConfig(t, "n2", n1.addr())
			n2 := startNode(t, c2)
			waitFullMesh(t, converge, n1, n2)
			c2.BindPort = int(n2.local.Port())
			if tt.graceful {
				n2.stop(t)
				waitFor(t, converge, "n1 to see n2 leave", func() bool {
					ev, ok := n1.lastEvent("n2")
					return ok && ev.Type == EventLeave
				})
			} else {
				_ = n2.Close()
			}
			c2.Meta.Endpoint = "192.0.2.9:6784"
			again := startNode(t, c2)
			waitFor(t, converge, "n1 to see the restarted n2", func() bool {
				ms := n1.Members()
				ev, ok := n1.lastEvent("n2")
				return len(ms) == 1 && ms[0].Meta.Endpoint == "192.0.2.9:6784" && ok && ev.Type != EventLeave && ev.Peer.Meta.Endpoint == "192.0.2.9:6784"
			})
			waitFullMesh(t, converge, n1, again)
		})
	}
}

func TestJoinLearnedSeeds(t *testing.T) {
	a := startNode(t, testConfig(t, "a"))
	b := startNode(t, testConfig(t, "b"))
	n, err := a.Join(context.Background(), []string{b.addr(), a.addr()})
	if err != nil || n != 1 {
		t.Fatalf("Join = %d, %v; want 1 contacted (itself is skipped)", n, err)
	}
	waitFullMesh(t, converge, a, b)
	if n, err := a.Join(context.Background(), []string{b.addr()}); n != 0 || err != nil {
		t.Errorf("joining a member again = %d, %v; want nothing to do", n, err)
	}
}

// TestJoinsFewSeeds: a node given every member as a seed (the Kubernetes
// Node list) joins joinFanout of them, not all, and still learns everyone.
func TestJoinsFewSeeds(t *testing.T) {
	first := startNode(t, testConfig(t, "s0"))
	nodes := []*node{first}
	var seeds []string
	seeds = append(seeds, first.addr())
	for i := 1; i < 6; i++ {
		n := startNode(t, testConfig(t, fmt.Sprintf("s%d", i), first.addr()))
		nodes = append(nodes, n)
		seeds = append(seeds, n.addr())
	}
	waitFullMesh(t, 10*time.Second, nodes...)
	late := startNode(t, testConfig(t, "late", seeds...))
	waitFullMesh(t, 10*time.Second, append(nodes, late)...)
	if got := late.joinAttempts.Load(); got != joinFanout {
		t.Errorf("joined %d seeds of %d; want %d", got, len(seeds), joinFanout)
	}
}
