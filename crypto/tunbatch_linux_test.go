package crypto

import (
	"bytes"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// naiveSum is RFC 1071 word by word, the reference for sumNoFold.
func naiveSum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

func TestInternetChecksum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 3, 7, 8, 9, 31, 32, 33, 63, 100, 1379, 1380, 1500, 9000, 65535} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if got, want := fold(sumNoFold(b, 0)), naiveSum(b, 0); got != want {
			t.Errorf("%d bytes: sum %#04x, want %#04x", n, got, want)
		}
		init := r.Uint32() & 0xffffff
		if got, want := fold(sumNoFold(b, uint64(init))), naiveSum(b, init); got != want {
			t.Errorf("%d bytes from %#x: sum %#04x, want %#04x", n, init, got, want)
		}
	}
	for i := range 64 {
		b := bytes.Repeat([]byte{0xff}, i)
		if got, want := fold(sumNoFold(b, 0)), naiveSum(b, 0); got != want {
			t.Errorf("%d bytes of 0xff: sum %#04x, want %#04x", i, got, want)
		}
	}
}

// pktSpec describes a test packet.
type pktSpec struct {
	v6           bool
	udp          bool
	src, dst     byte // last byte of the addresses
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	opts         []byte // TCP options, a multiple of 4 bytes
	id           uint16
	payload      []byte
}

// build makes the packet with valid checksums.
func (s pktSpec) build() []byte {
	iph := 20
	if s.v6 {
		iph = 40
	}
	th := 20 + len(s.opts)
	if s.udp {
		th = 8
	}
	p := make([]byte, iph+th+len(s.payload))
	var src, dst []byte
	if s.v6 {
		p[0] = 0x60
		binary.BigEndian.PutUint16(p[4:], uint16(th+len(s.payload)))
		p[6] = unix.IPPROTO_TCP
		p[7] = 64
		copy(p[8:], []byte{0xfd, 0x77, 15: s.src})
		copy(p[24:], []byte{0xfd, 0x77, 15: s.dst})
		src, dst = p[8:24], p[24:40]
	} else {
		p[0] = 0x45
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		binary.BigEndian.PutUint16(p[4:], s.id)
		binary.BigEndian.PutUint16(p[6:], ipv4FlagsDF)
		p[8] = 64
		p[9] = unix.IPPROTO_TCP
		copy(p[12:], []byte{10, 77, 0, s.src})
		copy(p[16:], []byte{10, 77, 0, s.dst})
		binary.BigEndian.PutUint16(p[10:], ^naiveSum(p[:20], 0))
		src, dst = p[12:16], p[16:20]
	}
	proto := uint8(unix.IPPROTO_TCP)
	tp := p[iph:]
	binary.BigEndian.PutUint16(tp[0:], s.sport)
	binary.BigEndian.PutUint16(tp[2:], s.dport)
	csumAt := 16
	if s.udp {
		proto = unix.IPPROTO_UDP
		if s.v6 {
			p[6] = proto
		} else {
			p[9] = proto
			p[10], p[11] = 0, 0
			binary.BigEndian.PutUint16(p[10:], ^naiveSum(p[:20], 0))
		}
		binary.BigEndian.PutUint16(tp[4:], uint16(th+len(s.payload)))
		csumAt = 6
	} else {
		binary.BigEndian.PutUint32(tp[4:], s.seq)
		binary.BigEndian.PutUint32(tp[8:], s.ack)
		tp[12] = byte(th/4) << 4
		tp[13] = s.flags
		binary.BigEndian.PutUint16(tp[14:], 501)
		copy(tp[20:], s.opts)
	}
	copy(tp[th:], s.payload)
	c := ^fold(sumNoFold(tp, pseudoHeaderSum(proto, src, dst, len(tp))))
	if c == 0 && s.udp {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(tp[csumAt:], c)
	return p
}

// checkValid fails when pkt's IPv4 header or transport checksum is wrong.
func checkValid(t *testing.T, pkt []byte) {
	t.Helper()
	iph, proto := 20, pkt[9]
	src, dst := pkt[12:16], pkt[16:20]
	if pkt[0]>>4 == 6 {
		iph, proto = 40, pkt[6]
		src, dst = pkt[8:24], pkt[24:40]
	} else if s := naiveSum(pkt[:20], 0); s != 0xffff {
		t.Errorf("IPv4 header checksum wrong (sum %#04x)", s)
	}
	var ps uint32
	for _, b := range [][]byte{src, dst} {
		ps += uint32(naiveSum(b, 0))
	}
	ps += uint32(proto) + uint32(len(pkt)-iph)
	if s := naiveSum(pkt[iph:], ps); s != 0xffff {
		t.Errorf("transport checksum wrong (sum %#04x) in a %d-byte packet", s, len(pkt))
	}
}

// seqpacketTUN is a batchTUN on one end of a SOCK_SEQPACKET pair, which
// keeps packet boundaries as a TUN does; the test plays the kernel on the
// other end. Packets batchTUN leaves to wireguard-go's Write land in
// other.
func seqpacketTUN(t *testing.T) (*batchTUN, *os.File, *recordingTUN) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	ours, kernel := os.NewFile(uintptr(fds[0]), "tun"), os.NewFile(uintptr(fds[1]), "kernel")
	t.Cleanup(func() { ours.Close(); kernel.Close() })
	rec := &recordingTUN{}
	bt, err := batchTUNOn(rec, ours)
	if err != nil {
		t.Fatal(err)
	}
	return bt, kernel, rec
}

// recordingTUN stands in for wireguard-go's TUN beside batchTUN: it keeps
// what is written to it.
type recordingTUN struct {
	mu      sync.Mutex
	written [][]byte
}

func (r *recordingTUN) File() *os.File                                        { return nil }
func (r *recordingTUN) Read(bufs [][]byte, sizes []int, off int) (int, error) { return 0, os.ErrClosed }
func (r *recordingTUN) MTU() (int, error)                                     { return 1420, nil }
func (r *recordingTUN) Name() (string, error)                                 { return "test", nil }
func (r *recordingTUN) Events() <-chan tun.Event                              { return nil }
func (r *recordingTUN) Close() error                                          { return nil }
func (r *recordingTUN) BatchSize() int                                        { return 128 }
func (r *recordingTUN) Write(bufs [][]byte, off int) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, b := range bufs {
		r.written = append(r.written, bytes.Clone(b[off:]))
		n += len(b) - off
	}
	return n, nil
}

const testOffset = 16 // where wireguard-go puts packets in its buffers

func newBufs(n int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, testOffset+maxPacketLen)
	}
	return bufs, make([]int, n)
}

// gsoPacket is what the kernel hands a TUN reader for a large packet: a
// virtio header asking for segmentation and the checksum's completion, and
// the packet with the pseudo-header's sum in its checksum field.
func gsoPacket(s pktSpec, gsoSize int) []byte {
	p := s.build()
	iph := 20
	if s.v6 {
		iph = 40
	}
	th, csumOff, typ := 20+len(s.opts), 16, uint8(unix.VIRTIO_NET_HDR_GSO_TCPV4)
	if s.v6 {
		typ = unix.VIRTIO_NET_HDR_GSO_TCPV6
	}
	if s.udp {
		th, csumOff, typ = 8, 6, unix.VIRTIO_NET_HDR_GSO_UDP_L4
	}
	addr, al := 12, 4
	if s.v6 {
		addr, al = 8, 16
	}
	binary.BigEndian.PutUint16(p[iph+csumOff:], fold(pseudoHeaderSum(p[map[bool]int{false: 9, true: 6}[s.v6]], p[addr:addr+al], p[addr+al:addr+2*al], len(p)-iph)))
	h := virtioHdr{flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: typ, hdrLen: uint16(iph + th), gsoSize: uint16(gsoSize), csumStart: uint16(iph), csumOffset: uint16(csumOff)}
	out := make([]byte, vnetHdrLen+len(p))
	h.encode(out)
	copy(out[vnetHdrLen:], p)
	return out
}

// segmentsOf is what the segmentation of s into gsoSize pieces must give.
func segmentsOf(s pktSpec, gsoSize int) [][]byte {
	var out [][]byte
	pay := s.payload
	for i := 0; len(pay) > 0; i++ {
		n := min(gsoSize, len(pay))
		seg := s
		seg.payload = pay[:n]
		seg.id = s.id + uint16(i)
		if !s.udp {
			seg.seq = s.seq + uint32(i*gsoSize)
			if n < len(pay) {
				seg.flags &^= tcpFlagPSH | tcpFlagFIN
			}
		}
		out = append(out, seg.build())
		pay = pay[n:]
	}
	return out
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestBatchTUNReadSplitsSegmentedPackets(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ts := []byte{1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8} // NOP NOP timestamps
	cases := []struct {
		name string
		spec pktSpec
		gso  int
	}{
		{"IPv4 TCP", pktSpec{src: 1, dst: 2, sport: 40000, dport: 5201, seq: 1000, ack: 7, flags: tcpFlagACK | tcpFlagPSH, opts: ts, id: 9, payload: randomBytes(r, 30000)}, 1368},
		{"IPv4 TCP again, read in place", pktSpec{src: 1, dst: 2, sport: 40000, dport: 5201, seq: 31000, ack: 7, flags: tcpFlagACK, opts: ts, id: 40, payload: randomBytes(r, 64000)}, 1368},
		{"IPv4 TCP, last segment short", pktSpec{src: 1, dst: 2, sport: 40000, dport: 5201, seq: 95000, ack: 7, flags: tcpFlagACK | tcpFlagPSH, opts: ts, id: 90, payload: randomBytes(r, 5000)}, 1368},
		{"IPv6 TCP, other segment size", pktSpec{v6: true, src: 1, dst: 2, sport: 40001, dport: 5201, seq: 5, ack: 9, flags: tcpFlagACK | tcpFlagFIN, payload: randomBytes(r, 20000)}, 1000},
		{"IPv6 TCP in place", pktSpec{v6: true, src: 1, dst: 2, sport: 40001, dport: 5201, seq: 20005, ack: 9, flags: tcpFlagACK, payload: randomBytes(r, 12000)}, 1000},
		{"IPv4 UDP", pktSpec{udp: true, src: 1, dst: 2, sport: 4000, dport: 53, id: 3, payload: randomBytes(r, 9000)}, 1200},
		{"IPv6 UDP", pktSpec{v6: true, udp: true, src: 1, dst: 2, sport: 4000, dport: 53, payload: randomBytes(r, 9000)}, 1200},
	}
	bt, kernel, _ := seqpacketTUN(t)
	bufs, sizes := newBufs(128)
	for _, c := range cases {
		if _, err := kernel.Write(gsoPacket(c.spec, c.gso)); err != nil {
			t.Fatal(err)
		}
		n, err := bt.Read(bufs, sizes, testOffset)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		want := segmentsOf(c.spec, c.gso)
		if n != len(want) {
			t.Fatalf("%s: %d segments, want %d", c.name, n, len(want))
		}
		for i := range n {
			got := bufs[i][testOffset : testOffset+sizes[i]]
			if !bytes.Equal(got, want[i]) {
				t.Fatalf("%s: segment %d differs:\n got %x\nwant %x", c.name, i, got[:min(80, len(got))], want[i][:min(80, len(want[i]))])
			}
			checkValid(t, got)
		}
	}
	if s := bt.stats.readScattered.Load(); s < 3 {
		t.Errorf("%d packets read in place, want the ones after the first of each layout (3 or more)", s)
	}
}

func TestBatchTUNReadTakesWhatIsQueued(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	bt, kernel, _ := seqpacketTUN(t)
	var want [][]byte
	seq := uint32(1)
	for range 2 {
		s := pktSpec{src: 1, dst: 2, sport: 1, dport: 2, seq: seq, ack: 1, flags: tcpFlagACK, payload: randomBytes(r, 60000)}
		kernel.Write(gsoPacket(s, 1400))
		want = append(want, segmentsOf(s, 1400)...)
		seq += 60000
	}
	// One small packet the kernel finished itself (ICMP), and one whose
	// checksum is left to the reader.
	icmp := []byte{0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2, 8, 0, 0xf7, 0xff, 0, 0, 0, 0}
	kernel.Write(append(make([]byte, vnetHdrLen), icmp...))
	want = append(want, icmp)
	udp := pktSpec{udp: true, src: 1, dst: 2, sport: 9, dport: 10, payload: []byte("hello")}
	full := udp.build()
	partial := gsoPacket(udp, 100)
	partial[1] = unix.VIRTIO_NET_HDR_GSO_NONE
	kernel.Write(partial)
	want = append(want, full)

	bufs, sizes := newBufs(128)
	var got [][]byte
	for reads := 0; len(got) < len(want); reads++ {
		if reads == 4 {
			t.Fatalf("%d packets after 4 reads, want %d", len(got), len(want))
		}
		n, err := bt.Read(bufs, sizes, testOffset)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			got = append(got, bytes.Clone(bufs[i][testOffset:testOffset+sizes[i]]))
		}
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("packet %d differs:\n got %x\nwant %x", i, got[i][:min(60, len(got[i]))], want[i][:min(60, len(want[i]))])
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d packets, want %d", len(got), len(want))
	}
}

func TestBatchTUNReadRefusesMalformed(t *testing.T) {
	good := gsoPacket(pktSpec{src: 1, dst: 2, sport: 1, dport: 2, seq: 1, flags: tcpFlagACK, payload: make([]byte, 3000)}, 1000)
	cases := map[string]func([]byte) []byte{
		"shorter than the virtio header": func(b []byte) []byte { return b[:5] },
		"unknown GSO type":               func(b []byte) []byte { b[1] = 9; return b },
		"ECN GSO":                        func(b []byte) []byte { b[1] |= 0x80; return b },
		"IPv6 header under GSO TCPv4":    func(b []byte) []byte { b[vnetHdrLen] = 0x60; return b },
		"TCP header length under 20":     func(b []byte) []byte { b[vnetHdrLen+20+12] = 0x10; return b },
		"no segment size":                func(b []byte) []byte { b[4], b[5] = 0, 0; return b },
		"checksum at a wrong offset":     func(b []byte) []byte { b[8] = 3; return b },
		"headers cut":                    func(b []byte) []byte { return b[:vnetHdrLen+30] },
	}
	for name, mangle := range cases {
		t.Run(name, func(t *testing.T) {
			bt, kernel, _ := seqpacketTUN(t)
			bufs, sizes := newBufs(128)
			// The bad packet is dropped, not an error (the device would
			// stop), and the good one after it reads as ever.
			kernel.Write(mangle(bytes.Clone(good)))
			kernel.Write(bytes.Clone(good))
			if n, err := bt.Read(bufs, sizes, testOffset); err != nil || n != 3 {
				t.Fatalf("read %d packets, %v; want the 3 of the good packet", n, err)
			}
			if d := bt.stats.readMalformed.Load(); d != 1 {
				t.Fatalf("%d packets dropped as malformed, want 1", d)
			}
		})
	}
}

// writtenPackets reads what Write sent to the "kernel" end until it is
// empty.
func writtenPackets(t *testing.T, kernel *os.File) [][]byte {
	t.Helper()
	var out [][]byte
	buf := make([]byte, vnetHdrLen+maxPacketLen)
	sc, _ := kernel.SyscallConn()
	for {
		var n int
		var rerr error
		sc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf)
			return true
		})
		if rerr == unix.EAGAIN {
			return out
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		out = append(out, bytes.Clone(buf[:n]))
	}
}

func toBufs(pkts [][]byte) [][]byte {
	bufs := make([][]byte, len(pkts))
	for i, p := range pkts {
		bufs[i] = append(make([]byte, testOffset), p...)
	}
	return bufs
}

func TestBatchTUNWriteCoalescesTCP(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	ts := []byte{1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8}
	a := pktSpec{src: 1, dst: 2, sport: 40000, dport: 5201, seq: 100, ack: 5, flags: tcpFlagACK, opts: ts, id: 1, payload: randomBytes(r, 1368*6+500)}
	b := pktSpec{v6: true, src: 1, dst: 2, sport: 40000, dport: 5201, seq: 7, ack: 5, flags: tcpFlagACK | tcpFlagPSH, payload: randomBytes(r, 1400*4)}
	segA, segB := segmentsOf(a, 1368), segmentsOf(b, 1400)
	pureACK := pktSpec{src: 2, dst: 1, sport: 5201, dport: 40000, seq: 5, ack: 100, flags: tcpFlagACK}.build()
	udp := pktSpec{udp: true, src: 1, dst: 2, sport: 9, dport: 10, payload: []byte("x")}.build()
	// a0 a1 b0 a2 b1 udp ack a3 b2 b3 a4 a5 a6: a, and b, interleaved.
	in := [][]byte{segA[0], segA[1], segB[0], segA[2], segB[1], udp, pureACK, segA[3], segB[2], segB[3], segA[4], segA[5], segA[6]}
	bt, kernel, rec := seqpacketTUN(t)
	if _, err := bt.Write(toBufs(in), testOffset); err != nil {
		t.Fatal(err)
	}
	out := writtenPackets(t, kernel)
	// a's run of 7 (its last is short), b's of 4 (PSH on its last), the
	// pure ACK alone.
	if len(out) != 3 {
		t.Fatalf("%d packets written, want 3", len(out))
	}
	if len(rec.written) != 1 || !bytes.Equal(rec.written[0], udp) {
		t.Fatalf("left to wireguard-go: %d packets, want the UDP one", len(rec.written))
	}
	// Segmenting each written packet as the kernel would must give back
	// the segments written.
	rbt, rkernel, _ := seqpacketTUN(t)
	bufs, sizes := newBufs(128)
	for i, want := range [][][]byte{segA, segB, {pureACK}} {
		rkernel.Write(out[i])
		n, err := rbt.Read(bufs, sizes, testOffset)
		if err != nil {
			t.Fatal(err)
		}
		if n != len(want) {
			t.Fatalf("packet %d: %d segments, want %d", i, n, len(want))
		}
		for j := range n {
			if got := bufs[j][testOffset : testOffset+sizes[j]]; !bytes.Equal(got, want[j]) {
				t.Fatalf("packet %d segment %d differs:\n got %x\nwant %x", i, j, got[:60], want[j][:60])
			}
		}
	}
	if got := bt.stats.segsCoalesced.Load(); got != 11 {
		t.Errorf("%d segments coalesced, want 11", got)
	}
}

func TestBatchTUNWriteKeepsApart(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	base := pktSpec{src: 1, dst: 2, sport: 1000, dport: 2000, seq: 1, ack: 1, flags: tcpFlagACK, id: 1}
	seg := func(mod func(*pktSpec)) []byte {
		s := base
		s.payload = randomBytes(r, 1000)
		s.seq = base.seq + 1000
		mod(&s)
		return s.build()
	}
	first := func() []byte { s := base; s.payload = randomBytes(r, 1000); return s.build() }
	cases := map[string][]byte{
		"a gap in sequence": seg(func(s *pktSpec) { s.seq += 1 }),
		"another ack":       seg(func(s *pktSpec) { s.ack++ }),
		"other options":     seg(func(s *pktSpec) { s.opts = []byte{1, 1, 1, 1} }),
		"SYN":               seg(func(s *pktSpec) { s.flags |= tcpFlagSYN }),
		"FIN":               seg(func(s *pktSpec) { s.flags |= tcpFlagFIN }),
		"RST":               seg(func(s *pktSpec) { s.flags = tcpFlagRST | tcpFlagACK }),
		"URG":               seg(func(s *pktSpec) { s.flags |= 0x20 }),
		"larger than the first": seg(func(s *pktSpec) {
			s.payload = randomBytes(r, 1001)
		}),
		"another port":    seg(func(s *pktSpec) { s.sport++ }),
		"another address": seg(func(s *pktSpec) { s.dst++ }),
		"another TTL": func() []byte {
			p := seg(func(*pktSpec) {})
			p[8]--
			p[10], p[11] = 0, 0
			binary.BigEndian.PutUint16(p[10:], ^naiveSum(p[:20], 0))
			return p
		}(),
		"ECN marked": func() []byte {
			p := seg(func(*pktSpec) {})
			p[1] |= 3
			p[10], p[11] = 0, 0
			binary.BigEndian.PutUint16(p[10:], ^naiveSum(p[:20], 0))
			return p
		}(),
		"another window": func() []byte { p := seg(func(*pktSpec) {}); p[20+15]++; return p }(),
		"no payload":     seg(func(s *pktSpec) { s.payload = nil }),
		"not DF": func() []byte {
			p := seg(func(*pktSpec) {})
			p[6] = 0
			p[10], p[11] = 0, 0
			binary.BigEndian.PutUint16(p[10:], ^naiveSum(p[:20], 0))
			return p
		}(),
		"trailing garbage": append(seg(func(*pktSpec) {}), 0),
	}
	for name, second := range cases {
		t.Run(name, func(t *testing.T) {
			bt, kernel, rec := seqpacketTUN(t)
			in := [][]byte{first(), second}
			if _, err := bt.Write(toBufs(in), testOffset); err != nil {
				t.Fatal(err)
			}
			out := append(writtenPackets(t, kernel), rec.written...)
			if len(out) != 2 {
				t.Fatalf("%d packets written, want 2, apart", len(out))
			}
			if bt.stats.runsWritten.Load() != 0 {
				t.Fatal("coalesced")
			}
		})
	}
}

// FuzzBatchTUNWrite: whatever the packets, Write sends every one exactly
// once, and a written packet segmented again gives back, in order, the TCP
// packets of its flow.
func FuzzBatchTUNWrite(f *testing.F) {
	f.Add([]byte{0, 10, 0, 10, 0, 10, 1, 10, 0, 3, 2, 0})
	f.Add([]byte{5, 200, 5, 200, 7, 0, 5, 100, 9, 9})
	f.Fuzz(func(t *testing.T, prog []byte) {
		r := rand.New(rand.NewPCG(uint64(len(prog)), 1))
		flows := []pktSpec{
			{src: 1, dst: 2, sport: 1, dport: 2, seq: 1, ack: 1, flags: tcpFlagACK},
			{v6: true, src: 1, dst: 2, sport: 1, dport: 2, seq: 1 << 31, ack: 1, flags: tcpFlagACK},
			{src: 1, dst: 3, sport: 1, dport: 2, seq: 0xffffff00, ack: 1, flags: tcpFlagACK, opts: []byte{1, 1, 1, 1}},
		}
		var in [][]byte
		for i := 0; i+1 < len(prog) && len(in) < 128; i += 2 {
			op, arg := prog[i], int(prog[i+1])
			s := &flows[int(op)%len(flows)]
			p := *s
			p.payload = randomBytes(r, arg*7)
			switch op / 3 % 6 {
			case 1:
				p.flags |= tcpFlagPSH
			case 2:
				p.seq += uint32(arg) // a gap
			case 3:
				p.udp = true
			case 4:
				p.flags = tcpFlagACK | tcpFlagFIN
			}
			in = append(in, p.build())
			if !p.udp {
				s.seq = p.seq + uint32(len(p.payload))
				s.id++
			}
		}
		if len(in) == 0 {
			return
		}
		bt, kernel, rec := seqpacketTUN(t)
		if _, err := bt.Write(toBufs(in), testOffset); err != nil {
			t.Fatal(err)
		}
		out := writtenPackets(t, kernel)
		rbt, rkernel, _ := seqpacketTUN(t)
		bufs, sizes := newBufs(128)
		var got [][]byte
		for _, o := range out {
			rkernel.Write(o)
			n, err := rbt.Read(bufs, sizes, testOffset)
			if err != nil {
				t.Fatalf("re-segmenting a written packet: %v", err)
			}
			for j := range n {
				got = append(got, bytes.Clone(bufs[j][testOffset:testOffset+sizes[j]]))
			}
		}
		got = append(got, rec.written...)
		if len(got) != len(in) {
			t.Fatalf("%d packets out, %d in", len(got), len(in))
		}
		// Per flow (addresses, ports, protocol), the same packets in the
		// same order.
		key := func(p []byte) string {
			if p[0]>>4 == 6 {
				return string(p[6:7]) + string(p[8:44])
			}
			return string(p[9:10]) + string(p[12:24])
		}
		byFlow := func(ps [][]byte) map[string][][]byte {
			m := map[string][][]byte{}
			for _, p := range ps {
				m[key(p)] = append(m[key(p)], p)
			}
			return m
		}
		gm, im := byFlow(got), byFlow(in)
		for k, want := range im {
			g := gm[k]
			for j := range want {
				if j >= len(g) || !bytes.Equal(g[j], want[j]) {
					t.Fatalf("flow %x: packet %d differs or is missing", k, j)
				}
			}
		}
	})
}

// TestBatchTUNCarriesTrafficBetweenNamespaces joins two network namespaces
// by a real TUN in each and a relay between them that reads with one
// batchTUN and writes with the other, as the device does around its
// encryption. The kernel on both sides checks what batchTUN makes of its
// segmented packets: TCP streams both ways over IPv4 and IPv6 arrive whole,
// UDP datagrams of every size, pings and fragmented pings are answered.
func TestBatchTUNCarriesTrafficBetweenNamespaces(t *testing.T) {
	needRoot(t)
	nsA, nsB := newNS(t), newNS(t)
	open := func(n ns.NetNS, addr4, peer4, addr6, peer6 string) *batchTUN {
		var dev tun.Device
		err := n.Do(func(ns.NetNS) error {
			var err error
			dev, err = tun.CreateTUN("wbt0", 1420)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dev.Close() })
		if dev.BatchSize() <= 1 {
			t.Skip("the TUN has no segmentation offloads here")
		}
		h := nlHandle(t, n)
		link, err := h.LinkByName("wbt0")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
		for _, a := range []struct{ addr, peer string }{{addr4, peer4}, {addr6, peer6}} {
			ad, _ := netlink.ParseAddr(a.addr)
			ad.Peer, _ = netlink.ParseIPNet(a.peer)
			ad.Flags = unix.IFA_F_NODAD
			if err := h.AddrAdd(link, ad); err != nil {
				t.Fatal(err)
			}
		}
		bt := newBatchTUN(dev)
		b, ok := bt.(*batchTUN)
		if !ok {
			t.Fatalf("newBatchTUN kept wireguard-go's TUN %T", bt)
		}
		return b
	}
	a := open(nsA, "192.168.77.1/32", "192.168.77.2/32", "fd77::1/128", "fd77::2/128")
	b := open(nsB, "192.168.77.2/32", "192.168.77.1/32", "fd77::2/128", "fd77::1/128")
	relay := func(from, to *batchTUN) {
		bufs, sizes := newBufs(128)
		out := make([][]byte, 128)
		for {
			n, err := from.Read(bufs, sizes, testOffset)
			if err != nil {
				if errors.Is(err, os.ErrClosed) {
					return
				}
				t.Errorf("relay read: %v", err)
				return
			}
			for i := range n {
				out[i] = bufs[i][:testOffset+sizes[i]]
			}
			if n > 0 {
				if _, err := to.Write(out[:n], testOffset); err != nil && !errors.Is(err, os.ErrClosed) {
					t.Errorf("relay write: %v", err)
				}
			}
		}
	}
	go relay(a, b)
	go relay(b, a)

	// TCP: 32 MiB each way, over both families, checked by hash.
	for _, addr := range []string{"192.168.77.2", "fd77::2"} {
		var ln net.Listener
		nsB.Do(func(ns.NetNS) error {
			var err error
			ln, err = net.Listen("tcp", net.JoinHostPort(addr, "0"))
			return err
		})
		if ln == nil {
			t.Fatalf("listen on %s failed", addr)
		}
		defer ln.Close()
		const size = 32 << 20
		payload := make([]byte, size)
		crand.Read(payload)
		want := sha256.Sum256(payload)
		serverGot := make(chan [32]byte, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			h := sha256.New()
			io.CopyN(h, c, size)
			var sum [32]byte
			copy(sum[:], h.Sum(nil))
			serverGot <- sum
			c.Write(payload) // and back
		}()
		var c net.Conn
		var dialErr error
		nsA.Do(func(ns.NetNS) error {
			c, dialErr = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			return nil
		})
		if c == nil {
			t.Fatalf("connect to %s failed: %v", ln.Addr(), dialErr)
		}
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("send to %s: %v", addr, err)
		}
		select {
		case got := <-serverGot:
			if got != want {
				t.Fatalf("%s: the server received other bytes than were sent", addr)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: the server did not receive %d bytes", addr, size)
		}
		h := sha256.New()
		if _, err := io.CopyN(h, c, size); err != nil {
			t.Fatalf("receive from %s: %v", addr, err)
		}
		if [32]byte(h.Sum(nil)) != want {
			t.Fatalf("%s: the client received other bytes than were sent", addr)
		}
		c.Close()
	}
	if a.stats.readScattered.Load() == 0 || b.stats.runsWritten.Load() == 0 {
		t.Errorf("the streams took neither fast path: %d packets read in place, %d coalesced packets written",
			a.stats.readScattered.Load(), b.stats.runsWritten.Load())
	}
	t.Logf("side A read %d segmented packets in place and %d by copying; side B wrote %d segments as %d packets",
		a.stats.readScattered.Load(), a.stats.readCopied.Load(), b.stats.segsCoalesced.Load(), b.stats.runsWritten.Load())

	// UDP: every size up to the MTU's, each echoed.
	for _, addr := range []string{"192.168.77.2", "fd77::2"} {
		var pc net.PacketConn
		nsB.Do(func(ns.NetNS) error {
			var err error
			pc, err = net.ListenPacket("udp", net.JoinHostPort(addr, "0"))
			return err
		})
		defer pc.Close()
		go func() {
			buf := make([]byte, 2000)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
		var c net.Conn
		nsA.Do(func(ns.NetNS) error {
			var err error
			c, err = net.Dial("udp", pc.LocalAddr().String())
			return err
		})
		defer c.Close()
		max := 1420 - 28
		if strings.Contains(addr, ":") {
			max = 1420 - 48
		}
		buf := make([]byte, 2000)
		for size := 1; size <= max; size += 97 {
			msg := make([]byte, size)
			crand.Read(msg)
			var got []byte
			for try := 0; try < 3 && got == nil; try++ {
				c.Write(msg)
				c.SetReadDeadline(time.Now().Add(time.Second))
				if n, err := c.Read(buf); err == nil {
					got = buf[:n]
				}
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("UDP %d bytes to %s: echo %d bytes, not the same", size, addr, len(got))
			}
		}
	}

	// ICMP, plain and fragmented.
	for _, args := range [][]string{{"-c", "2", "192.168.77.2"}, {"-c", "2", "-s", "3000", "192.168.77.2"}, {"-6", "-c", "2", "fd77::2"}} {
		cmd := exec.Command("ping", append([]string{"-W", "2", "-i", "0.2", "-q"}, args...)...)
		var out []byte
		err := nsA.Do(func(ns.NetNS) error {
			var err error
			out, err = cmd.CombinedOutput()
			return err
		})
		if err != nil {
			t.Fatalf("ping %v: %v\n%s", args, err, out)
		}
	}
}
