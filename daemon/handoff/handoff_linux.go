package handoff

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Received is what a successor got from its predecessor. It owns Files.
type Received struct {
	// PID of the predecessor.
	PID int
	// State is the predecessor's opaque state.
	State json.RawMessage
	// Files by the names the predecessor gave them.
	Files map[string]*os.File
}

// Close closes every file not taken out of Files.
func (r *Received) Close() {
	for _, f := range r.Files {
		f.Close()
	}
}

// Request asks the daemon serving the handoff socket at path for its data
// path, and acknowledges it. It returns ErrNoPredecessor when nothing
// listens there, ErrRefused (wrapped, with the reason) when the predecessor
// says no, ErrPredecessorGone when it hangs up first. ctx bounds the whole
// exchange: the predecessor stops its own parts before it answers.
func Request(ctx context.Context, path string) (*Received, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, ErrNoPredecessor
		}
		return nil, fmt.Errorf("connect to the running daemon on %s: %w", path, err)
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := checkPeer(conn, os.Geteuid()); err != nil {
		return nil, err
	}
	// A failed hello is read on: a refusal may be waiting (the predecessor
	// refuses a wrong uid before reading anything).
	helloErr := writeFrame(conn, frame{Type: typeHello, Version: Version, PID: os.Getpid()}, nil)
	f, files, err := readFrame(conn)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
		return nil, ErrPredecessorGone
	}
	if err != nil && helloErr != nil {
		return nil, fmt.Errorf("greet the running daemon: %w", helloErr)
	}
	if err != nil {
		return nil, fmt.Errorf("read the running daemon's answer: %w", err)
	}
	r := &Received{State: f.State, Files: map[string]*os.File{}}
	for i, file := range files {
		if i < len(f.Files) && f.Files[i] != "" {
			r.Files[f.Files[i]] = file
		} else {
			file.Close()
		}
	}
	switch f.Type {
	case typeState:
	case typeRefuse:
		r.Close()
		return nil, fmt.Errorf("%w: %s", ErrRefused, f.Reason)
	default:
		r.Close()
		return nil, fmt.Errorf("the running daemon answered %q to hello; is it another program?", f.Type)
	}
	r.PID = f.PID
	// The files are ours now; the ack only lets the predecessor log it.
	_ = writeFrame(conn, frame{Type: typeAck, Version: Version, PID: os.Getpid()}, nil)
	return r, nil
}

// Listener serves the handoff socket of a running daemon.
type Listener struct {
	ln    *net.UnixListener
	path  string
	inode os.FileInfo // of the socket file, to tell it from a successor's
	uid   int         // the uid a successor must run as
}

// Listen creates the handoff socket at path, mode 0600, replacing a stale
// one. Only processes of this effective uid may take over.
func Listen(path string) (*Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create run dir: %w", err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".handoff-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, filepath.Base(path))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	// Created elsewhere and renamed into place: the socket is never
	// reachable with a looser mode, and a stale one is replaced atomically.
	fi, err := os.Stat(tmp)
	if err == nil {
		err = os.Chmod(tmp, 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return &Listener{ln: ln, path: path, inode: fi, uid: os.Geteuid()}, nil
}

// Close stops listening and removes the socket, unless a successor's
// listener has replaced it already.
func (l *Listener) Close() error {
	if fi, err := os.Stat(l.path); err == nil && os.SameFile(fi, l.inode) {
		os.Remove(l.path)
	}
	return l.ln.Close()
}

// Successor is a daemon that asked for the data path.
type Successor struct {
	conn *net.UnixConn
	// PID of the successor.
	PID int
}

// Accept waits for a successor. Successors of another uid or protocol
// version are refused here, and Accept waits for the next. It returns
// net.ErrClosed after Close.
func (l *Listener) Accept() (*Successor, error) {
	for {
		conn, err := l.ln.AcceptUnix()
		if err != nil {
			return nil, err
		}
		s, err := l.greet(conn)
		if err != nil {
			conn.Close()
			continue
		}
		return s, nil
	}
}

// greet reads the successor's hello and refuses what may not take over.
func (l *Listener) greet(conn *net.UnixConn) (*Successor, error) {
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := checkPeer(conn, l.uid); err != nil {
		_ = writeFrame(conn, frame{Type: typeRefuse, Version: Version, Reason: err.Error()}, nil)
		return nil, err
	}
	f, files, err := readFrame(conn)
	for _, file := range files {
		file.Close()
	}
	if err != nil {
		return nil, err
	}
	if f.Type != typeHello || f.Version != Version {
		reason := fmt.Sprintf("protocol version %d (%s) asked for; this daemon speaks %d", f.Version, f.Type, Version)
		_ = writeFrame(conn, frame{Type: typeRefuse, Version: Version, Reason: reason}, nil)
		return nil, errors.New(reason)
	}
	conn.SetDeadline(time.Time{})
	return &Successor{conn: conn, PID: f.PID}, nil
}

// Refuse tells the successor no, and hangs up.
func (s *Successor) Refuse(reason string) {
	s.conn.SetDeadline(time.Now().Add(time.Second))
	_ = writeFrame(s.conn, frame{Type: typeRefuse, Version: Version, Reason: reason}, nil)
	s.conn.Close()
}

// Close hangs up without handing anything over: the successor starts as
// after a crash.
func (s *Successor) Close() error { return s.conn.Close() }

// Hand sends state and files (named for the successor) and waits, up to
// timeout, for the acknowledgement. The files are duplicated into the
// message: the caller still owns and closes its own. It hangs up after.
func (s *Successor) Hand(state any, files map[string]*os.File, timeout time.Duration) error {
	defer s.conn.Close()
	raw, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("encode the state to hand over: %w", err)
	}
	f := frame{Type: typeState, Version: Version, PID: os.Getpid(), State: raw}
	var list []*os.File
	for name, file := range files {
		f.Files = append(f.Files, name)
		list = append(list, file)
	}
	s.conn.SetDeadline(time.Now().Add(timeout))
	if err := writeFrame(s.conn, f, list); err != nil {
		return fmt.Errorf("hand over to pid %d: %w", s.PID, err)
	}
	ack, _, err := readFrame(s.conn)
	if err != nil {
		return fmt.Errorf("pid %d did not acknowledge the handover: %w", s.PID, err)
	}
	if ack.Type != typeAck {
		return fmt.Errorf("pid %d answered %q to the handover", s.PID, ack.Type)
	}
	return nil
}

// checkPeer fails unless the process at the other end runs as uid.
func checkPeer(conn *net.UnixConn, uid int) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("read the peer's credentials: %w", credErr)
	}
	if int(cred.Uid) != uid {
		return fmt.Errorf("pid %d runs as uid %d, not %d: only the same user may hand over a data path", cred.Pid, cred.Uid, uid)
	}
	return nil
}

// writeFrame sends f as a 4-byte length and JSON, with files attached.
func writeFrame(conn *net.UnixConn, f frame, files []*os.File) error {
	body, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if len(body) > maxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(body), maxFrame)
	}
	if len(files) > maxFiles {
		return fmt.Errorf("%d files exceed %d", len(files), maxFiles)
	}
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	msg = append(msg, body...)
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, file := range files {
			fds[i] = int(file.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	// The descriptors ride on the first write; the rest of a long frame
	// follows as plain bytes.
	n, _, err := conn.WriteMsgUnix(msg, oob, nil)
	for err == nil && n < len(msg) {
		var m int
		m, err = conn.Write(msg[n:])
		n += m
	}
	return err
}

// readFrame reads one frame and the descriptors sent with it. It never
// reads past the frame, so descriptors cannot land with the wrong one.
func readFrame(conn *net.UnixConn) (frame, []*os.File, error) {
	var files []*os.File
	fail := func(err error) (frame, []*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return frame{}, nil, err
	}
	read := func(buf []byte) error {
		for len(buf) > 0 {
			oob := make([]byte, unix.CmsgSpace(maxFiles*4))
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if oobn > 0 {
				got, perr := parseRights(oob[:oobn])
				files = append(files, got...)
				if perr != nil {
					return perr
				}
			}
			if n == 0 && err == nil {
				err = io.EOF
			}
			if err != nil {
				return err
			}
			buf = buf[n:]
		}
		return nil
	}
	var hdr [4]byte
	if err := read(hdr[:]); err != nil {
		return fail(err)
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size > maxFrame {
		return fail(fmt.Errorf("frame of %d bytes exceeds %d", size, maxFrame))
	}
	body := make([]byte, size)
	if err := read(body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fail(err)
	}
	var f frame
	if err := json.Unmarshal(body, &f); err != nil {
		return fail(fmt.Errorf("decode frame: %w", err))
	}
	return f, files, nil
}

// parseRights turns SCM_RIGHTS control messages into files.
func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), fmt.Sprintf("handoff-fd-%d", fd)))
		}
	}
	return files, nil
}
