package crypto

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// batchBind is weft's UDP side of the userspace tunnel (a wireguard-go
// conn.Bind). It does what wireguard-go's StdNetBind does (a socket per
// family, UDP GSO and GRO, replies from the address a peer wrote to) without
// copying datagrams:
//
//   - Sending, StdNetBind copies the sealed datagrams of a batch into one
//     buffer per UDP_SEGMENT message. batchBind hands the kernel the
//     datagrams where they lie, as the iovecs of the message.
//   - Receiving, StdNetBind reads coalesced datagrams (GRO) into one buffer
//     and copies each datagram out into a buffer of its own. batchBind
//     scatters the read over those buffers, one datagram's worth each, at
//     the datagram size it saw last; a read of another size is copied as
//     StdNetBind does.
//
// The source address a peer's datagrams came to is kept on its endpoint and
// used for the replies (IP_PKTINFO). Unlike StdNetBind it pins only the
// address, not the interface, so a changed route takes effect at once; a
// source address that went away is dropped on the first send that fails
// for it.
type batchBind struct {
	log *slog.Logger

	mu    sync.Mutex
	socks [2]*bindSocket // IPv4, IPv6; nil when closed or unsupported
	mark  uint32
}

var _ conn.Bind = (*batchBind)(nil)

const (
	bindBatch        = conn.IdealBatchSize // buffers per receive and most per send
	udpMaxSegments   = 64                  // the kernel's limit per UDP GSO or GRO message
	bindSocketBuffer = 7 << 20             // as StdNetBind
	minScatterDgram  = 1024                // a datagram size below it is read unscattered
)

func newBatchBind(log *slog.Logger) *batchBind {
	return &batchBind{log: log}
}

// bindSocket is one family's socket.
type bindSocket struct {
	is6   bool
	conn  *net.UDPConn
	rc    syscall.RawConn
	txGSO atomic.Bool
	rxGRO bool
	sends sync.Pool // *sendState
	recv  recvState // one receiving goroutine per socket
}

// bindEndpoint is a peer's address and, once it has written to us, the local
// address it wrote to.
type bindEndpoint struct {
	dst netip.AddrPort
	src atomic.Pointer[netip.Addr]
}

var _ conn.Endpoint = (*bindEndpoint)(nil)

func (e *bindEndpoint) ClearSrc()           { e.src.Store(nil) }
func (e *bindEndpoint) DstIP() netip.Addr   { return e.dst.Addr() }
func (e *bindEndpoint) DstToString() string { return e.dst.String() }
func (e *bindEndpoint) DstToBytes() []byte  { b, _ := e.dst.MarshalBinary(); return b }
func (e *bindEndpoint) SrcIP() netip.Addr {
	if p := e.src.Load(); p != nil {
		return *p
	}
	return netip.Addr{}
}
func (e *bindEndpoint) SrcToString() string {
	if a := e.SrcIP(); a.IsValid() {
		return a.String()
	}
	return ""
}

func (b *batchBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &bindEndpoint{dst: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

func (b *batchBind) BatchSize() int { return bindBatch }

// Open listens on port (0: any) for both families, on the same port.
func (b *batchBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.socks[0] != nil || b.socks[1] != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	for tries := 0; ; tries++ {
		s4, p, err := listenUDP(false, port)
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, 0, err
		}
		if s4 == nil {
			p = port
		}
		s6, p6, err := listenUDP(true, p)
		if port == 0 && errors.Is(err, syscall.EADDRINUSE) && tries < 100 {
			s4.close()
			continue
		}
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			s4.close()
			return nil, 0, err
		}
		if s4 == nil && s6 == nil {
			return nil, 0, syscall.EAFNOSUPPORT
		}
		if s4 == nil {
			p = p6
		}
		b.socks = [2]*bindSocket{s4, s6}
		var fns []conn.ReceiveFunc
		for _, s := range b.socks {
			if s != nil {
				if b.mark != 0 {
					s.setMark(b.mark)
				}
				fns = append(fns, s.receive)
			}
		}
		return fns, p, nil
	}
}

// listenUDP opens one family's socket with the options StdNetBind sets:
// large buffers, the local address of every datagram, GRO.
func listenUDP(is6 bool, port uint16) (*bindSocket, uint16, error) {
	network := "udp4"
	if is6 {
		network = "udp6"
	}
	var optErr error
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			s := int(fd)
			for _, o := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF, unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
				unix.SetsockoptInt(s, unix.SOL_SOCKET, o, bindSocketBuffer) // best effort, as StdNetBind
			}
			if is6 {
				optErr = errors.Join(unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1),
					unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1))
			} else {
				optErr = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			}
		})
	}}
	pc, err := lc.ListenPacket(context.Background(), network, ":"+strconv.Itoa(int(port)))
	if err != nil {
		return nil, 0, err
	}
	c := pc.(*net.UDPConn)
	if optErr != nil {
		c.Close()
		return nil, 0, fmt.Errorf("set the options of the %s socket: %w", network, optErr)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	s := &bindSocket{is6: is6, conn: c, rc: rc}
	rc.Control(func(fd uintptr) {
		if _, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT); err == nil {
			s.txGSO.Store(true)
		}
		s.rxGRO = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	})
	s.sends.New = func() any { return newSendState(is6) }
	return s, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

func (s *bindSocket) close() error {
	if s == nil {
		return nil
	}
	return s.conn.Close()
}

func (s *bindSocket) setMark(mark uint32) error {
	var err error
	if cerr := s.rc.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); cerr != nil {
		return cerr
	}
	return err
}

func (b *batchBind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mark = mark
	for _, s := range b.socks {
		if s != nil {
			if err := s.setMark(mark); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *batchBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := errors.Join(b.socks[0].close(), b.socks[1].close())
	b.socks = [2]*bindSocket{}
	return err
}

// sendState is what one Send builds: a message per run of equal-sized
// datagrams, their iovecs, destination and control data.
type sendState struct {
	msgs []unix.Mmsghdr
	iovs []unix.Iovec
	oob  [][]byte
	sa4  unix.RawSockaddrInet4
	sa6  unix.RawSockaddrInet6
}

var (
	pktinfo4Space = unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	pktinfo6Space = unix.CmsgSpace(unix.SizeofInet6Pktinfo)
	segmentSpace  = unix.CmsgSpace(2)
	groSpace      = unix.CmsgSpace(4)
)

func newSendState(is6 bool) *sendState {
	st := &sendState{
		msgs: make([]unix.Mmsghdr, bindBatch),
		iovs: make([]unix.Iovec, bindBatch),
		oob:  make([][]byte, bindBatch),
	}
	for i := range st.oob {
		st.oob[i] = make([]byte, pktinfo6Space+segmentSpace)
	}
	return st
}

// Send sends bufs, each a datagram, to ep: runs of equal-sized datagrams
// (the last of a run may be shorter) as one UDP_SEGMENT message each, every
// message in one sendmmsg.
func (b *batchBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*bindEndpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	if len(bufs) > bindBatch {
		return fmt.Errorf("send %d datagrams at once, more than %d", len(bufs), bindBatch)
	}
	is6 := e.dst.Addr().Is6()
	b.mu.Lock()
	s := b.socks[0]
	if is6 {
		s = b.socks[1]
	}
	b.mu.Unlock()
	if s == nil {
		return syscall.EAFNOSUPPORT
	}
	st := s.sends.Get().(*sendState)
	defer s.sends.Put(st)
	src := e.SrcIP()
	gso := s.txGSO.Load()
	err := s.send(st, bufs, e.dst, src, gso)
	var serr *os.SyscallError
	if err != nil && src.IsValid() && errors.As(err, &serr) {
		// The address the peer wrote to is gone, or no route leaves from it
		// any more (EINVAL, ENETUNREACH): let the kernel choose.
		e.ClearSrc()
		err = s.send(st, bufs, e.dst, netip.Addr{}, gso)
	}
	if err != nil && gso && errors.Is(err, unix.EIO) {
		// A device on the path cannot segment (no checksum offload):
		// datagrams one by one from now on, as StdNetBind does.
		s.txGSO.Store(false)
		b.log.Warn("UDP segmentation offload failed; sending datagrams one by one", "err", err)
		err = s.send(st, bufs, e.dst, src, false)
	}
	return err
}

func (s *bindSocket) send(st *sendState, bufs [][]byte, dst netip.AddrPort, src netip.Addr, gso bool) error {
	var name unsafe.Pointer
	var namelen uint32
	if s.is6 {
		st.sa6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: dst.Addr().As16()}
		binary16(&st.sa6.Port, dst.Port())
		name, namelen = unsafe.Pointer(&st.sa6), unix.SizeofSockaddrInet6
	} else {
		st.sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.Addr().As4()}
		binary16(&st.sa4.Port, dst.Port())
		name, namelen = unsafe.Pointer(&st.sa4), unix.SizeofSockaddrInet4
	}
	maxPayload := 65535 - 8 // IPv6 payload length counts the UDP header
	if !s.is6 {
		maxPayload -= 20
	}
	n := 0
	for i := 0; i < len(bufs); n++ {
		size, j, total := len(bufs[i]), i+1, len(bufs[i])
		for gso && j < len(bufs) && j-i < udpMaxSegments && len(bufs[j]) <= size && total+len(bufs[j]) <= maxPayload {
			total += len(bufs[j])
			j++
			if len(bufs[j-1]) < size {
				break // a shorter datagram ends a run
			}
		}
		for k := i; k < j; k++ {
			st.iovs[k] = iov(bufs[k])
		}
		oob := st.oob[n][:0]
		if src.IsValid() {
			oob = appendPktinfo(oob, src)
		}
		if j-i > 1 {
			oob = appendSegment(oob, uint16(size))
		}
		m := &st.msgs[n]
		m.Hdr = unix.Msghdr{Name: (*byte)(name), Namelen: namelen, Iov: &st.iovs[i]}
		m.Hdr.SetIovlen(j - i)
		if len(oob) > 0 {
			m.Hdr.Control = &oob[0]
			m.Hdr.SetControllen(len(oob))
		}
		m.Len = 0
		i = j
	}
	for start := 0; start < n; {
		var sent int
		var serr syscall.Errno
		err := s.rc.Write(func(fd uintptr) bool {
			r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&st.msgs[start])), uintptr(n-start), 0, 0, 0)
			if e == unix.EAGAIN {
				return false
			}
			sent, serr = int(r), e
			return true
		})
		if err != nil {
			return err
		}
		if serr != 0 {
			return os.NewSyscallError("sendmmsg", serr)
		}
		start += sent
	}
	return nil
}

func binary16(p *uint16, v uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(v>>8), byte(v)
}

// appendPktinfo adds the source address a datagram is to leave from, in
// oob's spare capacity.
func appendPktinfo(oob []byte, src netip.Addr) []byte {
	at := len(oob)
	if src.Is4() {
		oob = oob[:at+pktinfo4Space]
		clear(oob[at:])
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[at]))
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&oob[at+unix.CmsgLen(0)]))
		info.Spec_dst = src.As4()
		return oob
	}
	oob = oob[:at+pktinfo6Space]
	clear(oob[at:])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[at]))
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&oob[at+unix.CmsgLen(0)]))
	info.Addr = src.As16()
	return oob
}

// appendSegment adds UDP_SEGMENT, in oob's spare capacity: the kernel cuts
// the message into datagrams of size bytes.
func appendSegment(oob []byte, size uint16) []byte {
	at := len(oob)
	oob = oob[:at+segmentSpace]
	clear(oob[at:])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[at]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[at+unix.CmsgLen(0)])) = size
	return oob
}

// recvState is one socket's receiving: its messages, iovecs and the size
// of datagram the next read is scattered for.
type recvState struct {
	seg     int // 0: read whole datagrams, unscattered
	msgs    []unix.Mmsghdr
	iovs    []unix.Iovec
	names   []unix.RawSockaddrInet6
	oob     [][]byte
	scratch []byte
}

// receive reads up to len(bufs)/64 messages, each one datagram or up to 64
// coalesced ones (GRO), and returns the datagrams in bufs[:n]; buffers
// between messages are left empty (size 0), which the device skips.
func (s *bindSocket) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	r := &s.recv
	// With GRO a message is up to 64 datagrams: as many messages as that
	// leaves buffers for. Without, a datagram per buffer.
	m := len(bufs)
	if s.rxGRO {
		m = max(len(bufs)/udpMaxSegments, 1)
	}
	scatter := s.rxGRO && len(bufs) >= udpMaxSegments && r.seg >= minScatterDgram
	if r.msgs == nil {
		r.msgs = make([]unix.Mmsghdr, len(bufs))
		r.iovs = make([]unix.Iovec, len(bufs))
		r.names = make([]unix.RawSockaddrInet6, len(bufs))
		r.oob = make([][]byte, len(bufs))
		for i := range r.oob {
			r.oob[i] = make([]byte, pktinfo6Space+groSpace)
		}
		r.scratch = make([]byte, 1<<16)
	}
	seg := r.seg
	for i := range m {
		h := &r.msgs[i]
		if scatter {
			for k := range udpMaxSegments {
				r.iovs[i*udpMaxSegments+k] = iov(bufs[i*udpMaxSegments+k][:seg])
			}
			h.Hdr = unix.Msghdr{Iov: &r.iovs[i*udpMaxSegments]}
			h.Hdr.SetIovlen(udpMaxSegments)
		} else {
			r.iovs[i] = iov(bufs[len(bufs)-m+i])
			h.Hdr = unix.Msghdr{Iov: &r.iovs[i]}
			h.Hdr.SetIovlen(1)
		}
		h.Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet6
		h.Hdr.Control = &r.oob[i][0]
		h.Hdr.SetControllen(len(r.oob[i]))
		h.Len = 0
	}
	var got int
	var rerr syscall.Errno
	err := s.rc.Read(func(fd uintptr) bool {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.msgs[0])), uintptr(m), 0, 0, 0)
		if e == unix.EAGAIN {
			return false
		}
		got, rerr = int(n), e
		return true
	})
	if err != nil {
		return 0, err // net.ErrClosed once closed
	}
	if rerr != 0 {
		return 0, os.NewSyscallError("recvmmsg", rerr)
	}
	count := 0
	for i := range got {
		h := &r.msgs[i]
		length := int(h.Len)
		gso, src := parseRecvControl(r.oob[i][:h.Hdr.Controllen])
		if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
			length = 0 // cannot happen with 64 KiB per message; dropped
		}
		ep := &bindEndpoint{dst: sockaddrAddrPort(&r.names[i])}
		if src.IsValid() {
			ep.src.Store(&src)
		}
		if scatter {
			base := i * udpMaxSegments
			n := placeScattered(bufs[base:base+udpMaxSegments], sizes[base:base+udpMaxSegments], length, seg, gso, r.scratch)
			for k := range n {
				eps[base+k] = ep
			}
			count = base + n
		} else {
			srcIdx := len(bufs) - m + i
			n := placeWhole(bufs, sizes, count, srcIdx, length, gso)
			for k := count; k < count+n; k++ {
				eps[k] = ep
			}
			count += n
		}
		switch {
		case gso >= minScatterDgram && len(bufs) >= udpMaxSegments:
			r.seg = gso
		case gso > 0:
			r.seg = 0
		}
	}
	return count, nil
}

// placeScattered makes datagrams of a message of length bytes read
// scattered over bufs, seg bytes into each: in place when the datagrams are
// seg bytes (gso = seg, or one datagram that fits), else by copying. It sets
// the sizes of all of bufs (0 where no datagram is) and returns how many
// hold one.
func placeScattered(bufs [][]byte, sizes []int, length, seg, gso int, scratch []byte) int {
	clear(sizes)
	switch {
	case length == 0:
		return 0
	case gso == 0 && length <= seg:
		sizes[0] = length
		return 1
	case gso == 0:
		// One datagram longer than seg: put its parts together in the
		// first buffer.
		for k := 1; k*seg < length; k++ {
			copy(bufs[0][k*seg:], bufs[k][:min(seg, length-k*seg)])
		}
		sizes[0] = length
		return 1
	case gso == seg:
		n := 0
		for at := 0; at < length; at += seg {
			sizes[n] = min(seg, length-at)
			n++
		}
		return n
	}
	// Coalesced at another size: gather, then split.
	for k := 0; k*seg < length; k++ {
		copy(scratch[k*seg:], bufs[k][:min(seg, length-k*seg)])
	}
	n := 0
	for at := 0; at < length && n < len(bufs); at += gso {
		sizes[n] = copy(bufs[n], scratch[at:min(at+gso, length)])
		n++
	}
	return n
}

// placeWhole puts the datagrams of a message read whole into bufs[src] into
// bufs[out:], splitting coalesced ones (gso > 0) by copying, and returns how
// many it placed. The sources are the last buffers and the datagrams go
// into the first ones, so none is overwritten before it is split.
func placeWhole(bufs [][]byte, sizes []int, out, src, length, gso int) int {
	if length == 0 {
		return 0
	}
	data := bufs[src][:length]
	if gso == 0 {
		if out != src {
			copy(bufs[out], data)
		}
		sizes[out] = length
		return 1
	}
	n := 0
	for at := 0; at < length && out+n < len(bufs); at += gso {
		sizes[out+n] = copy(bufs[out+n], data[at:min(at+gso, length)])
		n++
	}
	return n
}

// parseRecvControl reads the GRO segment size (0: one datagram) and the
// local address a datagram came to.
func parseRecvControl(oob []byte) (gso int, src netip.Addr) {
	for len(oob) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return gso, src
		}
		switch {
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 2:
			// An int; its low 16 bits are the size (native endian).
			gso = int(*(*uint16)(unsafe.Pointer(&data[0])))
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			src = netip.AddrFrom4(info.Spec_dst)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			src = netip.AddrFrom16(info.Addr)
		}
		oob = rest
	}
	return gso, src
}

// sockaddrAddrPort reads the sender of a datagram.
func sockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	port := uint16(p[0])<<8 | uint16(p[1])
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
}
