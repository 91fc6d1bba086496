package crypto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// batchTUN is weft's read and write path on wireguard-go's Linux TUN with
// segmentation offloads (IFF_VNET_HDR). wireguard-go's own path copies every
// byte once more than it must on each side:
//
//   - Reading, it reads a segmented packet (up to 64 KiB) into one buffer and
//     copies each segment into the buffer the device encrypts it in.
//     batchTUN reads with readv straight into those buffers, leaving room for
//     each segment's headers, which it then writes in front: only headers are
//     copied. And it reads every packet queued, up to the batch size, so a
//     batch the device encrypts and sends is several segmented packets, not
//     one.
//   - Writing, it coalesces consecutive TCP segments of a flow into one large
//     packet (GRO) by copying their payloads behind the first, after
//     checking each segment's checksum. batchTUN writes the same large
//     packet with writev from the decrypted buffers where they lie, and
//     checks no checksum: a packet wireguard-go writes was decrypted and
//     authenticated, so it is the packet the peer sent, checksums included
//     (kernel WireGuard trusts them the same way).
//
// Everything else (events, MTU, name, close, and writes of packets that are
// not TCP data segments) is wireguard-go's NativeTun.
type batchTUN struct {
	tun.Device
	rc syscall.RawConn

	// Read side; the device has one TUN reader.
	stage   []byte // a packet read whole: virtio header + up to 64 KiB
	gather  []byte // a scattered packet put back together
	hdrLen  int    // the headers of the last segmented packet read ...
	gsoSize int    // ... and its segment size: how the next read is scattered
	riov    []unix.Iovec
	pending []byte // a packet read that did not fit the caller's buffers ...
	pendLay layout // ... and its layout
	readErr error  // an error met after some packets were read
	stats   batchStats

	// Write side; peers' receive routines write concurrently.
	wmu   sync.Mutex
	runs  []tcpRun
	next  []int // next[i]: the packet after bufs[i] in its run, or -1
	other [][]byte
	wiov  []unix.Iovec
}

const (
	vnetHdrLen    = 10    // sizeof(struct virtio_net_hdr)
	maxPacketLen  = 65535 // largest IP packet the TUN hands over
	maxRunSegs    = 64    // segments coalesced into one write at most
	tcpFlagFIN    = 0x01
	tcpFlagSYN    = 0x02
	tcpFlagRST    = 0x04
	tcpFlagPSH    = 0x08
	tcpFlagACK    = 0x10
	ipv4FlagsDF   = 0x4000
	minScatterLen = 576 // below it a segment size is not worth scattering for
)

// newBatchTUN wraps dev when it is wireguard-go's TUN with offloads on, and
// returns dev itself otherwise.
func newBatchTUN(dev tun.Device) tun.Device {
	f, ok := dev.(interface{ File() *os.File })
	if !ok || dev.BatchSize() <= 1 {
		return dev
	}
	t, err := batchTUNOn(dev, f.File())
	if err != nil {
		return dev
	}
	return t
}

// batchTUNOn reads and writes packets with virtio headers on f, and leaves
// the rest to dev.
func batchTUNOn(dev tun.Device, f *os.File) (*batchTUN, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &batchTUN{
		Device: dev,
		rc:     rc,
		stage:  make([]byte, vnetHdrLen+maxPacketLen),
		gather: make([]byte, maxPacketLen),
	}, nil
}

// batchStats counts what the fast paths did, for tests and benchmarks.
type batchStats struct {
	readScattered atomic.Uint64 // segmented packets read in place
	readCopied    atomic.Uint64 // segmented packets split by copying
	runsWritten   atomic.Uint64 // coalesced packets written (2 segments or more)
	segsCoalesced atomic.Uint64 // segments in them
	readMalformed atomic.Uint64 // packets read and dropped as malformed
}

// malformedError is a packet read from the TUN that cannot be made sense
// of.
type malformedError struct{ error }

// virtioHdr is struct virtio_net_hdr, in the host's byte order (a TUN
// without TUNSETVNETLE/BE uses the legacy, native-endian layout).
type virtioHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func (h *virtioHdr) decode(b []byte) {
	h.flags, h.gsoType = b[0], b[1]
	h.hdrLen = binary.NativeEndian.Uint16(b[2:])
	h.gsoSize = binary.NativeEndian.Uint16(b[4:])
	h.csumStart = binary.NativeEndian.Uint16(b[6:])
	h.csumOffset = binary.NativeEndian.Uint16(b[8:])
}

func (h *virtioHdr) encode(b []byte) {
	b[0], b[1] = h.flags, h.gsoType
	binary.NativeEndian.PutUint16(b[2:], h.hdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.gsoSize)
	binary.NativeEndian.PutUint16(b[6:], h.csumStart)
	binary.NativeEndian.PutUint16(b[8:], h.csumOffset)
}

func iov(b []byte) unix.Iovec {
	v := unix.Iovec{Base: unsafe.SliceData(b)}
	v.SetLen(len(b))
	return v
}

// Read fills bufs[i][offset:offset+sizes[i]] with packets read from the TUN,
// segments of segmented packets one by one. It waits for the first packet,
// then takes what else is queued while the remaining buffers can hold a
// packet of the size last seen.
func (t *batchTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if err := t.readErr; err != nil {
		t.readErr = nil
		return 0, err
	}
	n := 0
	if t.pending != nil {
		k, err := t.split(t.pending, t.pendLay, bufs, sizes, offset)
		t.pending = nil
		if err != nil {
			t.stats.readMalformed.Add(1)
		}
		n = k
	}
	for n < len(bufs) {
		if n > 0 && len(bufs)-n < t.segsForMax() {
			break
		}
		k, err := t.readPacket(bufs[n:], sizes[n:], offset, n == 0)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if _, bad := err.(malformedError); bad {
			// The kernel does not make such packets; the device would
			// stop on an error, so one is dropped and counted instead.
			t.stats.readMalformed.Add(1)
			continue
		}
		if err != nil {
			if n == 0 || errors.Is(err, os.ErrClosed) {
				return n, err
			}
			t.readErr = err
			break
		}
		n += k
	}
	return n, nil
}

// segsForMax is how many buffers the largest packet of the last layout
// needs.
func (t *batchTUN) segsForMax() int {
	if t.gsoSize == 0 {
		return 2
	}
	return (maxPacketLen-t.hdrLen)/t.gsoSize + 1
}

// readPacket reads one packet, waiting for it when wait is set, else
// returning EAGAIN when none is queued. When the last packet was segmented,
// the read is scattered as if this one were too, with the same headers and
// segment size: the first segment whole into bufs[0], every further
// segment's payload into the next buffer behind room for its headers, the
// rest into the stage. When the guess was right only the headers are left to
// write; else the packet is put back together and split by copying.
func (t *batchTUN) readPacket(bufs [][]byte, sizes []int, offset int, wait bool) (int, error) {
	t.riov = t.riov[:0]
	t.riov = append(t.riov, iov(t.stage[:vnetHdrLen]))
	scattered := 0 // buffers the read was scattered into
	if t.gsoSize >= minScatterLen {
		h, s := t.hdrLen, t.gsoSize
		for i := 0; i < len(bufs) && i < maxRunSegs; i++ {
			if i == 0 {
				t.riov = append(t.riov, iov(bufs[0][offset:offset+h+s]))
			} else {
				t.riov = append(t.riov, iov(bufs[i][offset+h:offset+h+s]))
			}
			scattered++
		}
	}
	t.riov = append(t.riov, iov(t.stage[vnetHdrLen:]))

	var r int
	var rerr error
	err := t.rc.Read(func(fd uintptr) bool {
		n, _, e := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&t.riov[0])), uintptr(len(t.riov)))
		if e == unix.EAGAIN && wait {
			return false
		}
		r = int(n)
		if e != 0 {
			rerr = e
		}
		return true
	})
	if err != nil {
		return 0, os.ErrClosed // the file's own error: closed, or closing
	}
	if errors.Is(rerr, unix.EBADFD) {
		return 0, os.ErrClosed
	}
	if rerr != nil {
		return 0, rerr
	}
	k, err := t.take(bufs, sizes, offset, wait, r, scattered)
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		return 0, malformedError{err}
	}
	return k, err
}

// take makes packets of the r bytes just read.
func (t *batchTUN) take(bufs [][]byte, sizes []int, offset int, wait bool, r, scattered int) (int, error) {
	if r < vnetHdrLen {
		return 0, fmt.Errorf("read %d bytes from the TUN, fewer than its %d-byte virtio header", r, vnetHdrLen)
	}
	var hdr virtioHdr
	hdr.decode(t.stage)
	plen := r - vnetHdrLen

	// Where the packet's bytes are: contiguous in the stage, or in the
	// scattered buffers (and maybe the stage after them).
	contiguous := func() []byte {
		if scattered == 0 {
			return t.stage[vnetHdrLen : vnetHdrLen+plen]
		}
		return t.gatherScattered(bufs, offset, scattered, plen)
	}
	if hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_NONE {
		var pkt []byte
		if scattered > 0 && plen <= t.hdrLen+t.gsoSize {
			pkt = bufs[0][offset : offset+plen]
		} else {
			pkt = contiguous()
			if len(bufs[0][offset:]) < plen {
				return 0, fmt.Errorf("a %d-byte packet read from the TUN does not fit a %d-byte buffer", plen, len(bufs[0][offset:]))
			}
			copy(bufs[0][offset:], pkt)
			pkt = bufs[0][offset : offset+plen]
		}
		if hdr.flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
			if err := finishChecksum(pkt, int(hdr.csumStart), int(hdr.csumOffset)); err != nil {
				return 0, err
			}
		}
		sizes[0] = plen
		return 1, nil
	}

	var lay layout
	var err error
	if scattered > 0 {
		// The headers, if the guess was right, are in bufs[0].
		lay, err = parseLayout(hdr, bufs[0][offset:offset+min(plen, t.hdrLen+t.gsoSize)])
		if err == nil && lay.hdrLen == t.hdrLen && lay.gsoSize == t.gsoSize && plen <= lay.hdrLen+scattered*lay.gsoSize {
			t.stats.readScattered.Add(1)
			return t.finish(bufs, sizes, offset, lay, plen)
		}
	}
	pkt := contiguous()
	lay, err = parseLayout(hdr, pkt)
	if err != nil {
		return 0, err
	}
	t.hdrLen, t.gsoSize = lay.hdrLen, lay.gsoSize
	if lay.segments(plen) > len(bufs) {
		if wait && len(bufs) >= maxRunSegs {
			return 0, fmt.Errorf("a segmented packet of %d bytes in %d-byte segments read from the TUN needs more than %d buffers", plen, lay.gsoSize, len(bufs))
		}
		// Kept for the next call; the stage is reused by the next read,
		// the gather buffer is not.
		if &pkt[0] != &t.gather[0] {
			copy(t.gather, pkt)
			pkt = t.gather[:plen]
		}
		t.pending, t.pendLay = pkt, lay
		return 0, unix.EAGAIN
	}
	return t.split(pkt, lay, bufs, sizes, offset)
}

// gatherScattered copies a packet read scattered into bufs (and the stage)
// into the gather buffer, contiguous.
func (t *batchTUN) gatherScattered(bufs [][]byte, offset, scattered, plen int) []byte {
	out := t.gather[:0]
	left := plen
	for i := 0; i < scattered && left > 0; i++ {
		var part []byte
		if i == 0 {
			part = bufs[0][offset : offset+t.hdrLen+t.gsoSize]
		} else {
			part = bufs[i][offset+t.hdrLen : offset+t.hdrLen+t.gsoSize]
		}
		part = part[:min(len(part), left)]
		out = append(out, part...)
		left -= len(part)
	}
	if left > 0 {
		out = append(out, t.stage[vnetHdrLen:vnetHdrLen+left]...)
	}
	return out
}

// layout describes a segmented packet read from the TUN.
type layout struct {
	isV6    bool
	proto   uint8
	iphLen  int
	hdrLen  int // IP and transport headers
	gsoSize int
}

func (l layout) segments(plen int) int {
	return (plen - l.hdrLen + l.gsoSize - 1) / l.gsoSize
}

// parseLayout checks a segmented packet's virtio header against the packet
// (the headers at least), trusting the kernel's header length no more than
// wireguard-go does: it is the transport header's own length that counts.
func parseLayout(hdr virtioHdr, pkt []byte) (layout, error) {
	l := layout{iphLen: int(hdr.csumStart), gsoSize: int(hdr.gsoSize)}
	if len(pkt) < 1 {
		return l, errors.New("empty segmented packet read from the TUN")
	}
	switch v := pkt[0] >> 4; {
	case v == 4 && (hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_TCPV4 || hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_UDP_L4):
	case v == 6 && (hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_TCPV6 || hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_UDP_L4):
		l.isV6 = true
	default:
		return l, fmt.Errorf("segmented packet read from the TUN: IP version %d with virtio GSO type %d", v, hdr.gsoType)
	}
	if hdr.flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 || l.gsoSize == 0 {
		return l, fmt.Errorf("segmented packet read from the TUN without a checksum to complete or a segment size (flags %#x, size %d)", hdr.flags, l.gsoSize)
	}
	if min := 20; l.isV6 {
		if l.iphLen < 40 {
			return l, fmt.Errorf("segmented IPv6 packet read from the TUN with its transport header at %d", l.iphLen)
		}
	} else if l.iphLen < min {
		return l, fmt.Errorf("segmented IPv4 packet read from the TUN with its transport header at %d", l.iphLen)
	}
	if hdr.gsoType == unix.VIRTIO_NET_HDR_GSO_UDP_L4 {
		l.proto = unix.IPPROTO_UDP
		l.hdrLen = l.iphLen + 8
		if hdr.csumOffset != 6 {
			return l, fmt.Errorf("segmented UDP packet read from the TUN with its checksum at offset %d", hdr.csumOffset)
		}
	} else {
		l.proto = unix.IPPROTO_TCP
		if len(pkt) <= l.iphLen+12 {
			return l, errors.New("segmented TCP packet read from the TUN is shorter than its headers")
		}
		th := int(pkt[l.iphLen+12]>>4) * 4
		if th < 20 {
			return l, fmt.Errorf("segmented TCP packet read from the TUN with a %d-byte TCP header", th)
		}
		l.hdrLen = l.iphLen + th
		if hdr.csumOffset != 16 {
			return l, fmt.Errorf("segmented TCP packet read from the TUN with its checksum at offset %d", hdr.csumOffset)
		}
	}
	if len(pkt) < l.hdrLen {
		return l, fmt.Errorf("segmented packet of %d bytes read from the TUN is shorter than its %d bytes of headers", len(pkt), l.hdrLen)
	}
	return l, nil
}

// split copies the segments of the contiguous packet pkt into bufs and
// finishes them.
func (t *batchTUN) split(pkt []byte, lay layout, bufs [][]byte, sizes []int, offset int) (int, error) {
	if lay.segments(len(pkt)) > len(bufs) {
		return 0, fmt.Errorf("a segmented packet of %d bytes in %d-byte segments read from the TUN needs more than %d buffers", len(pkt), lay.gsoSize, len(bufs))
	}
	t.stats.readCopied.Add(1)
	copy(bufs[0][offset:], pkt[:lay.hdrLen])
	for i, at := 0, lay.hdrLen; at < len(pkt); i, at = i+1, at+lay.gsoSize {
		end := min(at+lay.gsoSize, len(pkt))
		copy(bufs[i][offset+lay.hdrLen:], pkt[at:end])
	}
	return t.finish(bufs, sizes, offset, lay, len(pkt))
}

// finish writes the headers of every segment of a segmented packet of plen
// bytes whose payloads lie in place (bufs[i][offset+hdrLen:]) and whose
// original headers are at bufs[0][offset:]: lengths, IPv4 identification
// and header checksum, TCP sequence numbers and flags, UDP lengths, and the
// transport checksum of every segment.
func (t *batchTUN) finish(bufs [][]byte, sizes []int, offset int, l layout, plen int) (int, error) {
	n := l.segments(plen)
	hdr := bufs[0][offset : offset+l.hdrLen]
	addrAt, addrLen := 12, 4
	if l.isV6 {
		addrAt, addrLen = 8, 16
	}
	var seq0 uint32
	if l.proto == unix.IPPROTO_TCP {
		seq0 = binary.BigEndian.Uint32(hdr[l.iphLen+4:])
	}
	csumAt := l.iphLen + 6
	if l.proto == unix.IPPROTO_TCP {
		csumAt = l.iphLen + 16
	}
	// The first segment's headers are the original: they are rewritten
	// last.
	for i := n - 1; i >= 0; i-- {
		out := bufs[i][offset:]
		if i > 0 {
			copy(out[:l.hdrLen], hdr)
		}
		payload := min(l.gsoSize, plen-l.hdrLen-i*l.gsoSize)
		total := l.hdrLen + payload
		sizes[i] = total
		if l.isV6 {
			binary.BigEndian.PutUint16(out[4:], uint16(total-l.iphLen))
		} else {
			binary.BigEndian.PutUint16(out[2:], uint16(total))
			if i > 0 {
				binary.BigEndian.PutUint16(out[4:], binary.BigEndian.Uint16(out[4:])+uint16(i))
			}
			out[10], out[11] = 0, 0
			binary.BigEndian.PutUint16(out[10:], ^fold(sumNoFold(out[:l.iphLen], 0)))
		}
		if l.proto == unix.IPPROTO_TCP {
			binary.BigEndian.PutUint32(out[l.iphLen+4:], seq0+uint32(i*l.gsoSize))
			if i != n-1 {
				out[l.iphLen+13] &^= tcpFlagFIN | tcpFlagPSH
			}
		} else {
			binary.BigEndian.PutUint16(out[l.iphLen+4:], uint16(total-l.iphLen))
		}
		out[csumAt], out[csumAt+1] = 0, 0
		sum := pseudoHeaderSum(l.proto, out[addrAt:addrAt+addrLen], out[addrAt+addrLen:addrAt+2*addrLen], total-l.iphLen)
		c := ^fold(sumNoFold(out[l.iphLen:total], sum))
		if c == 0 && l.proto == unix.IPPROTO_UDP {
			c = 0xffff // 0 means "no checksum" in UDP
		}
		binary.BigEndian.PutUint16(out[csumAt:], c)
	}
	return n, nil
}

// finishChecksum completes the checksum the kernel left partial (the
// pseudo-header's sum at csumStart+csumOffset) in a packet that is not
// segmented.
func finishChecksum(pkt []byte, csumStart, csumOffset int) error {
	at := csumStart + csumOffset
	if csumStart > len(pkt) || at+2 > len(pkt) {
		return fmt.Errorf("packet of %d bytes read from the TUN with its checksum at %d+%d", len(pkt), csumStart, csumOffset)
	}
	initial := uint64(binary.BigEndian.Uint16(pkt[at:]))
	pkt[at], pkt[at+1] = 0, 0
	binary.BigEndian.PutUint16(pkt[at:], ^fold(sumNoFold(pkt[csumStart:], initial)))
	return nil
}

// tcpSeg is what Write needs of a TCP packet.
type tcpSeg struct {
	isV6     bool
	iphLen   int
	tcphLen  int
	payload  int
	seq      uint32
	flags    uint8
	coalesce bool // a data segment (ACK, maybe PSH) that GRO may merge
}

// parseTCP reads the headers of pkt when it is a whole TCP packet: IPv4
// not fragmented, or IPv6 whose first next header is TCP.
func parseTCP(pkt []byte) (tcpSeg, bool) {
	var s tcpSeg
	if len(pkt) < 20 {
		return s, false
	}
	switch pkt[0] >> 4 {
	case 4:
		s.iphLen = int(pkt[0]&0x0f) * 4
		if pkt[9] != unix.IPPROTO_TCP || s.iphLen < 20 || int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) {
			return s, false
		}
		if frag := binary.BigEndian.Uint16(pkt[6:]); frag&^ipv4FlagsDF != 0 {
			return s, false // a fragment, or more to come
		}
	case 6:
		s.isV6, s.iphLen = true, 40
		if len(pkt) < 40 || pkt[6] != unix.IPPROTO_TCP || int(binary.BigEndian.Uint16(pkt[4:]))+40 != len(pkt) {
			return s, false
		}
	default:
		return s, false
	}
	if len(pkt) < s.iphLen+20 {
		return s, false
	}
	s.tcphLen = int(pkt[s.iphLen+12]>>4) * 4
	if s.tcphLen < 20 || len(pkt) < s.iphLen+s.tcphLen {
		return s, false
	}
	s.payload = len(pkt) - s.iphLen - s.tcphLen
	s.seq = binary.BigEndian.Uint32(pkt[s.iphLen+4:])
	s.flags = pkt[s.iphLen+13]
	s.coalesce = s.payload > 0 && s.flags&^tcpFlagPSH == tcpFlagACK &&
		(s.isV6 || (s.iphLen == 20 && binary.BigEndian.Uint16(pkt[6:]) == ipv4FlagsDF))
	return s, true
}

// tcpRun is a run of TCP segments of one flow, in order, written as one
// packet when it holds more than one.
type tcpRun struct {
	head, tail int // indices into the written bufs
	seg        tcpSeg
	segs       int
	payload    int
	nextSeq    uint32
	pshAtEnd   bool
	closed     bool
}

// joins says whether segment q (in packet pkt), of the flow of run r (see
// sameFlow), may follow the run, whose head packet is head: IP and TCP
// headers the same but for lengths, identification, sequence number and
// checksum (options and window included, as the kernel's own GRO asks), in
// sequence, and no larger than the head's segment.
func (r *tcpRun) joins(head []byte, pkt []byte, q tcpSeg) bool {
	h := r.seg
	if r.closed || !h.coalesce || !q.coalesce || q.isV6 != h.isV6 || q.tcphLen != h.tcphLen ||
		q.seq != r.nextSeq || q.payload > h.payload || r.segs >= maxRunSegs ||
		h.iphLen+h.tcphLen+r.payload+q.payload > maxPacketLen {
		return false
	}
	if h.isV6 {
		// version, traffic class, flow label; hop limit (addresses: sameFlow)
		if [4]byte(head[0:4]) != [4]byte(pkt[0:4]) || head[7] != pkt[7] {
			return false
		}
	} else {
		// TOS; TTL (addresses: sameFlow)
		if head[1] != pkt[1] || head[8] != pkt[8] {
			return false
		}
	}
	t0, t1 := head[h.iphLen:h.iphLen+h.tcphLen], pkt[h.iphLen:h.iphLen+h.tcphLen]
	// ack; data offset, flags (PSH aside) and window; options (ports:
	// sameFlow)
	if [4]byte(t0[8:12]) != [4]byte(t1[8:12]) ||
		t0[12] != t1[12] || t0[13]&^tcpFlagPSH != t1[13]&^tcpFlagPSH || [2]byte(t0[14:16]) != [2]byte(t1[14:16]) ||
		string(t0[20:]) != string(t1[20:]) {
		return false
	}
	return true
}

// sameFlow says whether pkt is of the flow of the run whose head is head.
func sameFlow(head, pkt []byte, h, q tcpSeg) bool {
	if h.isV6 != q.isV6 {
		return false
	}
	if h.isV6 {
		if string(head[8:40]) != string(pkt[8:40]) {
			return false
		}
	} else if string(head[12:20]) != string(pkt[12:20]) {
		return false
	}
	return string(head[h.iphLen:h.iphLen+4]) == string(pkt[q.iphLen:q.iphLen+4])
}

// Write writes the packets bufs[i][offset:], which the device decrypted and
// authenticated, to the TUN: a flow's consecutive TCP data segments as one
// large packet (GRO), written with writev from where they lie, other TCP
// packets one by one in their flow's order, and everything else through
// wireguard-go's own Write.
func (t *batchTUN) Write(bufs [][]byte, offset int) (int, error) {
	if offset < vnetHdrLen {
		return t.Device.Write(bufs, offset)
	}
	t.wmu.Lock()
	defer t.wmu.Unlock()
	t.plan(bufs, offset)
	var total int
	var errs error
	for k := range t.runs {
		n, err := t.writeRun(bufs, offset, &t.runs[k])
		if errors.Is(err, os.ErrClosed) {
			return total, err
		}
		errs = errors.Join(errs, err)
		total += n
	}
	if len(t.other) > 0 {
		n, err := t.Device.Write(t.other, offset)
		errs = errors.Join(errs, err)
		total += n
	}
	return total, errs
}

// plan sorts the packets bufs[i][offset:] into runs (TCP) and others.
func (t *batchTUN) plan(bufs [][]byte, offset int) {
	t.runs, t.other = t.runs[:0], t.other[:0]
	if cap(t.next) < len(bufs) {
		t.next = make([]int, len(bufs))
	}
	t.next = t.next[:len(bufs)]
	for i, b := range bufs {
		pkt := b[offset:]
		q, ok := parseTCP(pkt)
		if !ok {
			t.other = append(t.other, b)
			continue
		}
		t.next[i] = -1
		joined := false
		for k := len(t.runs) - 1; k >= 0; k-- {
			r := &t.runs[k]
			head := bufs[r.head][offset:]
			if !sameFlow(head, pkt, r.seg, q) {
				continue
			}
			if r.joins(head, pkt, q) {
				t.next[r.tail] = i
				r.tail = i
				r.segs++
				r.payload += q.payload
				r.nextSeq += uint32(q.payload)
				if q.payload < r.seg.payload || q.flags&tcpFlagPSH != 0 {
					r.closed = true
					r.pshAtEnd = q.flags&tcpFlagPSH != 0
				}
				joined = true
			} else {
				r.closed = true // the flow goes on in a new run
			}
			break // only a flow's newest run may be open
		}
		if !joined {
			t.runs = append(t.runs, tcpRun{
				head: i, tail: i, seg: q, segs: 1, payload: q.payload,
				nextSeq: q.seq + uint32(q.payload),
				closed:  !q.coalesce || q.flags&tcpFlagPSH != 0,
			})
		}
	}
}

// writeRun writes one run: a single packet as it is, several as one
// segmented packet made of the first packet's headers and every packet's
// payload.
func (t *batchTUN) writeRun(bufs [][]byte, offset int, r *tcpRun) (int, error) {
	head := bufs[r.head][offset-vnetHdrLen:]
	t.wiov = t.wiov[:0]
	if r.segs == 1 {
		clear(head[:vnetHdrLen])
		t.wiov = append(t.wiov, iov(head))
		return t.writev()
	}
	h := r.seg
	pkt := head[vnetHdrLen : vnetHdrLen+h.iphLen+h.tcphLen+h.payload]
	if h.isV6 {
		binary.BigEndian.PutUint16(pkt[4:], uint16(h.tcphLen+r.payload))
	} else {
		binary.BigEndian.PutUint16(pkt[2:], uint16(h.iphLen+h.tcphLen+r.payload))
		pkt[10], pkt[11] = 0, 0
		binary.BigEndian.PutUint16(pkt[10:], ^fold(sumNoFold(pkt[:h.iphLen], 0)))
	}
	if r.pshAtEnd {
		pkt[h.iphLen+13] |= tcpFlagPSH
	}
	// CHECKSUM_PARTIAL: the pseudo-header's sum, for whoever completes it.
	addrAt, addrLen := 12, 4
	if h.isV6 {
		addrAt, addrLen = 8, 16
	}
	psum := pseudoHeaderSum(unix.IPPROTO_TCP, pkt[addrAt:addrAt+addrLen], pkt[addrAt+addrLen:addrAt+2*addrLen], h.tcphLen+r.payload)
	binary.BigEndian.PutUint16(pkt[h.iphLen+16:], fold(psum))
	vh := virtioHdr{
		flags:      unix.VIRTIO_NET_HDR_F_NEEDS_CSUM,
		gsoType:    unix.VIRTIO_NET_HDR_GSO_TCPV4,
		hdrLen:     uint16(h.iphLen + h.tcphLen),
		gsoSize:    uint16(h.payload),
		csumStart:  uint16(h.iphLen),
		csumOffset: 16,
	}
	if h.isV6 {
		vh.gsoType = unix.VIRTIO_NET_HDR_GSO_TCPV6
	}
	vh.encode(head)
	t.stats.runsWritten.Add(1)
	t.stats.segsCoalesced.Add(uint64(r.segs))
	t.wiov = append(t.wiov, iov(head[:vnetHdrLen+len(pkt)]))
	hl := h.iphLen + h.tcphLen
	for i := t.next[r.head]; i >= 0; i = t.next[i] {
		t.wiov = append(t.wiov, iov(bufs[i][offset+hl:]))
	}
	return t.writev()
}

// writev writes t.wiov to the TUN as one packet.
func (t *batchTUN) writev() (int, error) {
	var n int
	var werr error
	err := t.rc.Write(func(fd uintptr) bool {
		r, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&t.wiov[0])), uintptr(len(t.wiov)))
		if e == unix.EAGAIN {
			return false
		}
		n = int(r)
		if e != 0 {
			werr = e
		}
		return true
	})
	if err != nil || errors.Is(werr, unix.EBADFD) {
		return 0, os.ErrClosed
	}
	if werr != nil {
		return 0, fmt.Errorf("write to the TUN: %w", werr)
	}
	return max(n-vnetHdrLen, 0), nil
}
