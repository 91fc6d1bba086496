package crypto

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// openBind opens a batchBind on a free port, closed at cleanup.
func openBind(t *testing.T) (*batchBind, []conn.ReceiveFunc, uint16) {
	t.Helper()
	b := newBatchBind(discardLogger())
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, fns, port
}

// receiveN calls fn until it has n datagrams, and returns them with their
// endpoints.
func receiveN(t *testing.T, fn conn.ReceiveFunc, n int) ([][]byte, []conn.Endpoint) {
	t.Helper()
	bufs := make([][]byte, bindBatch)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<16)
	}
	sizes := make([]int, bindBatch)
	eps := make([]conn.Endpoint, bindBatch)
	var got [][]byte
	var gotEps []conn.Endpoint
	done := make(chan error, 1)
	go func() {
		for len(got) < n {
			k, err := fn(bufs, sizes, eps)
			if err != nil {
				done <- err
				return
			}
			for i := range k {
				if sizes[i] == 0 {
					continue
				}
				got = append(got, bytes.Clone(bufs[i][:sizes[i]]))
				gotEps = append(gotEps, eps[i])
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("received %d datagrams of %d", len(got), n)
	}
	return got, gotEps
}

func TestBatchBindSendsAndReceivesBatches(t *testing.T) {
	for _, family := range []struct {
		name string
		addr string
		fn   int
	}{{"IPv4", "127.0.0.1", 0}, {"IPv6", "::1", 1}} {
		t.Run(family.name, func(t *testing.T) {
			a, _, _ := openBind(t)
			b, bFns, bPort := openBind(t)
			if len(bFns) != 2 {
				t.Skipf("%d receive functions: this machine lacks a family", len(bFns))
			}
			ep, err := a.ParseEndpoint(net.JoinHostPort(family.addr, fmt.Sprint(bPort)))
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(1, 1))
			// Batches as wireguard-go sends them: runs of equal-sized
			// datagrams, a shorter one ending a run, sizes changing.
			var batches [][][]byte
			for _, sizes := range [][]int{
				{1452, 1452, 1452, 1452, 1452, 1452, 1452, 700},
				repeat(1452, 128),
				{32, 148, 92, 32},
				append(repeat(1200, 70), repeat(1452, 50)...),
				{1452, 1200, 1452, 1452, 9000, 100},
			} {
				var batch [][]byte
				for _, n := range sizes {
					d := make([]byte, n)
					for i := range d {
						d[i] = byte(r.Uint32())
					}
					batch = append(batch, d)
				}
				batches = append(batches, batch)
			}
			for i, batch := range batches {
				if err := a.Send(batch, ep); err != nil {
					t.Fatalf("batch %d: %v", i, err)
				}
				got, eps := receiveN(t, bFns[family.fn], len(batch))
				for j := range batch {
					if !bytes.Equal(got[j], batch[j]) {
						t.Fatalf("batch %d datagram %d: %d bytes, want %d, or other bytes", i, j, len(got[j]), len(batch[j]))
					}
				}
				if len(got) != len(batch) {
					t.Fatalf("batch %d: %d datagrams, want %d", i, len(got), len(batch))
				}
				// The sender is named, and so is the address it wrote to.
				if src := eps[0].SrcIP(); src.String() != family.addr {
					t.Errorf("batch %d: source kept %v, want %s", i, src, family.addr)
				}
				if dst := eps[0].DstIP(); dst.String() != family.addr {
					t.Errorf("batch %d: sender %v, want %s", i, dst, family.addr)
				}
			}
			s := b.socks[family.fn]
			if s.rxGRO && s.recv.seg == 0 {
				t.Errorf("GRO is on but no read was scattered")
			}
		})
	}
}

func repeat(n, times int) []int {
	out := make([]int, times)
	for i := range out {
		out[i] = n
	}
	return out
}

func TestBatchBindRepliesFromTheAddressWrittenTo(t *testing.T) {
	a, aFns, aPort := openBind(t)
	b, bFns, bPort := openBind(t)
	toB, _ := a.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", bPort))
	if err := a.Send([][]byte{[]byte("hello")}, toB); err != nil {
		t.Fatal(err)
	}
	_, eps := receiveN(t, bFns[0], 1)
	back := eps[0]
	if back.DstToString() != fmt.Sprintf("127.0.0.1:%d", aPort) || back.SrcToString() != "127.0.0.1" {
		t.Fatalf("endpoint %s from %s, want 127.0.0.1:%d from 127.0.0.1", back.DstToString(), back.SrcToString(), aPort)
	}
	if err := b.Send([][]byte{[]byte("back")}, back); err != nil {
		t.Fatal(err)
	}
	got, _ := receiveN(t, aFns[0], 1)
	if string(got[0]) != "back" {
		t.Fatalf("got %q", got[0])
	}
	// A source address that is not (or no longer) ours is dropped, and the
	// datagram leaves from the kernel's choice.
	gone := netip.MustParseAddr("192.0.2.1")
	back.(*bindEndpoint).src.Store(&gone)
	if err := b.Send([][]byte{[]byte("again")}, back); err != nil {
		t.Fatalf("send with a stale source: %v", err)
	}
	got, _ = receiveN(t, aFns[0], 1)
	if string(got[0]) != "again" {
		t.Fatalf("got %q", got[0])
	}
	if back.SrcIP().IsValid() {
		t.Errorf("the stale source %v is still kept", back.SrcIP())
	}
}

func TestBatchBindClose(t *testing.T) {
	b := newBatchBind(discardLogger())
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Fatalf("second Open: %v, want ErrBindAlreadyOpen", err)
	}
	done := make(chan error, 1)
	go func() {
		bufs := [][]byte{make([]byte, 1<<16)}
		_, err := fns[0](bufs, make([]int, 1), make([]conn.Endpoint, 1))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("receive after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("receive did not return after Close")
	}
	if err := b.Send([][]byte{{1}}, &bindEndpoint{dst: netip.MustParseAddrPort("127.0.0.1:9")}); err == nil {
		t.Fatal("send after Close succeeded")
	}
}

func TestPlaceScattered(t *testing.T) {
	const seg = 1452
	mk := func() ([][]byte, []int) {
		bufs := make([][]byte, udpMaxSegments)
		for i := range bufs {
			bufs[i] = make([]byte, 1<<16)
		}
		return bufs, make([]int, udpMaxSegments)
	}
	// scatter lays data out as the kernel does over iovecs of seg bytes.
	scatter := func(bufs [][]byte, data []byte) {
		for k := 0; k*seg < len(data); k++ {
			copy(bufs[k][:seg], data[k*seg:])
		}
	}
	data := make([]byte, 60000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	scratch := make([]byte, 1<<16)
	for _, c := range []struct {
		name   string
		length int
		gso    int
	}{
		{"one small datagram", 100, 0},
		{"one datagram of seg", seg, 0},
		{"one datagram larger than seg", 4000, 0},
		{"coalesced at seg", 40 * seg, seg},
		{"coalesced at seg, short last", 40*seg + 17, seg},
		{"coalesced at another size", 50 * 1200, 1200},
		{"coalesced at a larger size", 30*1500 + 3, 1500},
	} {
		bufs, sizes := mk()
		scatter(bufs, data[:c.length])
		sizes[63] = 99 // stale
		n := placeScattered(bufs, sizes, c.length, seg, c.gso, scratch)
		var joined []byte
		for i := range n {
			if c.gso > 0 && i < n-1 && sizes[i] != c.gso {
				t.Errorf("%s: datagram %d is %d bytes, want %d", c.name, i, sizes[i], c.gso)
			}
			joined = append(joined, bufs[i][:sizes[i]]...)
		}
		if !bytes.Equal(joined, data[:c.length]) {
			t.Errorf("%s: the datagrams are not the data read", c.name)
		}
		for i := n; i < len(sizes); i++ {
			if sizes[i] != 0 {
				t.Errorf("%s: buffer %d after the datagrams has size %d", c.name, i, sizes[i])
			}
		}
	}
}
