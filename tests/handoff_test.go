package tests

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// stream is a TCP connection between two pods that carries a numbered
// record every few milliseconds one way and its echo the other, and
// measures the largest pause between arrivals in each direction.
type stream struct {
	conn net.Conn // the client's end
	srv  net.Conn // the server's end
	ln   net.Listener
	wg   sync.WaitGroup

	mu       sync.Mutex
	sent     uint64 // records written by the client
	echoed   uint64 // records the client got back
	lastFwd  time.Time
	lastBack time.Time
	maxFwd   time.Duration // largest pause at the server
	maxBack  time.Duration // largest pause of the echoes at the client
	err      error
}

const recordSize = 16

// startStream connects client to server and starts the records flowing.
func startStream(t *testing.T, ctx context.Context, client, server *netlab.Pod) *stream {
	t.Helper()
	ln, err := server.Listen("tcp", ":9100")
	if err != nil {
		t.Fatal(err)
	}
	s := &stream{ln: ln}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	poll(t, ctx, func() error {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		s.conn, err = client.Dial(dctx, "tcp", net.JoinHostPort(server.IP().String(), "9100"))
		return err
	})
	var ok bool
	if s.srv, ok = <-accepted; !ok {
		t.Fatal("the server pod accepted no connection")
	}
	s.wg.Add(3)
	go s.serve(s.srv)
	go s.write()
	go s.readEchoes()
	t.Cleanup(s.close)
	return s
}

func (s *stream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil && !errors.Is(err, net.ErrClosed) {
		s.err = err
	}
}

// serve echoes what arrives and measures the pauses between arrivals.
func (s *stream) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			now := time.Now()
			s.mu.Lock()
			if !s.lastFwd.IsZero() {
				s.maxFwd = max(s.maxFwd, now.Sub(s.lastFwd))
			}
			s.lastFwd = now
			s.mu.Unlock()
			if _, werr := c.Write(buf[:n]); werr != nil {
				s.fail(fmt.Errorf("server echo: %w", werr))
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.fail(fmt.Errorf("server read: %w", err))
			}
			return
		}
	}
}

// write sends a record every 5 ms until the connection is closed.
func (s *stream) write() {
	defer s.wg.Done()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	rec := make([]byte, recordSize)
	for range tick.C {
		s.mu.Lock()
		seq := s.sent
		s.mu.Unlock()
		binary.BigEndian.PutUint64(rec, seq)
		binary.BigEndian.PutUint64(rec[8:], uint64(time.Now().UnixNano()))
		if _, err := s.conn.Write(rec); err != nil {
			s.fail(fmt.Errorf("client write: %w", err))
			return
		}
		s.mu.Lock()
		s.sent++
		s.mu.Unlock()
	}
}

// readEchoes checks that the records come back whole and in order, and
// measures the pauses between them.
func (s *stream) readEchoes() {
	defer s.wg.Done()
	rec := make([]byte, recordSize)
	for {
		if _, err := io.ReadFull(s.conn, rec); err != nil {
			s.fail(fmt.Errorf("client read: %w", err))
			return
		}
		now := time.Now()
		seq := binary.BigEndian.Uint64(rec)
		s.mu.Lock()
		if seq != s.echoed {
			s.mu.Unlock()
			s.fail(fmt.Errorf("record %d came back where %d was due", seq, s.echoed))
			return
		}
		s.echoed++
		if !s.lastBack.IsZero() {
			s.maxBack = max(s.maxBack, now.Sub(s.lastBack))
		}
		s.lastBack = now
		s.mu.Unlock()
	}
}

// reset starts a new measurement.
func (s *stream) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxFwd, s.maxBack = 0, 0
}

// settle waits until every record written so far came back and the stream
// ran on for d, then returns the largest pauses since reset.
func (s *stream) settle(t *testing.T, ctx context.Context, d time.Duration) (fwd, back time.Duration) {
	t.Helper()
	s.mu.Lock()
	target := s.sent
	s.mu.Unlock()
	until := time.Now().Add(d)
	poll(t, ctx, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.err != nil {
			t.Fatalf("the TCP stream broke: %v", s.err)
		}
		if s.echoed < target || time.Now().Before(until) {
			return fmt.Errorf("%d of %d records back", s.echoed, target)
		}
		return nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxFwd, s.maxBack
}

// close ends both ends here, so that it returns even when the path between
// them is broken and the client's FIN would never reach the server.
func (s *stream) close() {
	s.conn.Close()
	s.srv.Close()
	s.ln.Close()
	s.wg.Wait()
}

// waitExit waits for p to exit.
func waitExit(t *testing.T, ctx context.Context, p *netlab.Process, what string) {
	t.Helper()
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatalf("%s (pid %d) did not exit", what, p.PID())
	}
}

// TestHandoffKeepsStreams: a TCP stream between pods on two nodes goes on
// through every way of replacing a node's daemon, with the largest pause
// measured: a new daemon started while the old one runs takes the live
// tunnel over (as an upgrade with surge does), on either end; so does one
// started after a SIGTERM while the old one waits for it (--handoff-wait);
// one started after the old one exited, or after a kill -9, reattaches to
// the persistent TUN. Afterwards UDP, ICMP, fragmented packets, pods on
// the same node and the node network all still work.
func TestHandoffKeepsStreams(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nodes, _ := meshOf(t, ctx, lab, 2, "--handoff-wait", "5s")
	client, err := nodes[0].AddPod(ctx, netlab.PodConfig{Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	server, err := nodes[1].AddPod(ctx, netlab.PodConfig{Name: "server"})
	if err != nil {
		t.Fatal(err)
	}
	neighbour, err := nodes[0].AddPod(ctx, netlab.PodConfig{Name: "neighbour"})
	if err != nil {
		t.Fatal(err)
	}
	s := startStream(t, ctx, client, server)
	s.settle(t, ctx, time.Second)
	s.reset()
	fwd, back := s.settle(t, ctx, 2*time.Second)
	t.Logf("undisturbed: largest pause client→server %v, server→client %v", fwd.Round(time.Millisecond), back.Round(time.Millisecond))

	// successor starts n's next daemon while the old one runs and waits
	// for the old one to hand over and exit.
	successor := func(n *netlab.Node) func() {
		return func() {
			old, err := n.StartSuccessor()
			if err != nil {
				t.Fatal(err)
			}
			waitExit(t, ctx, old, "the old daemon of "+n.Name)
			if err := old.Wait(); err != nil {
				t.Errorf("the old daemon of %s ended with %v after the handover, want exit 0", n.Name, err)
			}
		}
	}
	tests := []struct {
		name     string
		node     *netlab.Node
		replace  func()
		limit    time.Duration
		handover bool // the log must show a handover
	}{
		{"new daemon while the old runs, client side", nodes[0], successor(nodes[0]), 500 * time.Millisecond, true},
		{"new daemon while the old runs, server side", nodes[1], successor(nodes[1]), 500 * time.Millisecond, true},
		{"SIGTERM then a new daemon at once", nodes[0], func() {
			if err := nodes[0].Daemon().Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			successor(nodes[0])()
		}, 500 * time.Millisecond, true},
		// As a DaemonSet with maxUnavailable rolls: the new pod starts
		// only once the old one is gone (here after its --handoff-wait).
		{"SIGTERM, exit, then a new daemon", nodes[0], func() {
			if err := nodes[0].RestartDaemon(); err != nil {
				t.Fatal(err)
			}
		}, time.Second, false},
		{"kill -9 then a new daemon", nodes[0], func() {
			if err := nodes[0].KillDaemon(); err != nil {
				t.Fatal(err)
			}
			if err := nodes[0].RestartDaemon(); err != nil {
				t.Fatal(err)
			}
		}, time.Second, false},
	}
	for _, tt := range tests {
		ok := t.Run(tt.name, func(t *testing.T) {
			logBefore := len(tt.node.Log())
			s.reset()
			start := time.Now()
			tt.replace()
			if err := tt.node.WaitSocket(ctx); err != nil {
				t.Fatal(err)
			}
			fwd, back := s.settle(t, ctx, 2*time.Second)
			t.Logf("%s: largest pause client→server %v, server→client %v (replaced in %v)", tt.name,
				fwd.Round(time.Millisecond), back.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			log := tt.node.Log()[logBefore:]
			for _, line := range strings.Split(log, "\n") {
				if strings.Contains(line, "took the data path over") || strings.Contains(line, "handed over to the new daemon") {
					t.Log(line)
				}
			}
			handed := strings.Contains(log, "took the data path over")
			if handed != tt.handover {
				t.Errorf("handover in the log of %s: %v, want %v\n%s", tt.node.Name, handed, tt.handover, tt.node.LogTail(40))
			}
			if fwd > tt.limit || back > tt.limit {
				t.Errorf("the stream paused %v / %v, want at most %v", fwd, back, tt.limit)
			}
			checkPaths(t, ctx, nodes, client, server, neighbour)
		})
		if !ok {
			break
		}
	}
}

// checkPaths: ICMP, fragmented ICMP and UDP between pods across nodes, a
// pod on the same node, and a node's address from a pod (masqueraded).
func checkPaths(t *testing.T, ctx context.Context, nodes []*netlab.Node, client, server, neighbour *netlab.Pod) {
	t.Helper()
	pings := []struct {
		what string
		dst  string
		size string
	}{
		{"ping to the pod on the other node", server.IP().String(), "56"},
		{"fragmented ping to the pod on the other node", server.IP().String(), "4000"},
		{"ping to the pod on the same node", neighbour.IP().String(), "56"},
		{"ping to the other node's address", nodes[1].Addr.String(), "56"},
	}
	for _, p := range pings {
		poll(t, ctx, func() error {
			out, err := client.Exec(ctx, "ping", "-c", "1", "-W", "1", "-M", "dont", "-s", p.size, p.dst)
			if err != nil {
				return fmt.Errorf("%s: %v: %s", p.what, err, out)
			}
			return nil
		})
	}
	pc, err := netlab.ListenPacket(server.Netns, "udp", ":9101")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 9000)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	for _, size := range []int{100, 3000} { // 3000: fragments
		poll(t, ctx, func() error {
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			c, err := client.Dial(dctx, "udp", net.JoinHostPort(server.IP().String(), "9101"))
			if err != nil {
				return err
			}
			defer c.Close()
			msg := []byte(strings.Repeat("u", size))
			c.SetDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(msg); err != nil {
				return err
			}
			buf := make([]byte, 9000)
			n, err := c.Read(buf)
			if err != nil {
				return fmt.Errorf("UDP echo of %d bytes: %w", size, err)
			}
			if n != size {
				return fmt.Errorf("UDP echo of %d bytes came back with %d", size, n)
			}
			return nil
		})
	}
}
