package handoff

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketpair returns two connected unix stream sockets.
func socketpair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

// TestFramePassesDescriptors: a descriptor sent with a frame reaches the
// other end as a working file, with the frame it was sent with and not the
// next one, even when the frame is longer than one read.
func TestFramePassesDescriptors(t *testing.T) {
	a, b := socketpair(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	big := make([]byte, 1<<20) // several socket buffers: written in parts
	for i := range big {
		big[i] = 'x'
	}
	state, _ := json.Marshal(string(big))
	errc := make(chan error, 1)
	go func() {
		err := writeFrame(a, frame{Type: typeState, Version: Version, Files: []string{"pipe"}, State: state}, []*os.File{w})
		if err == nil {
			err = writeFrame(a, frame{Type: typeAck, Version: Version}, nil)
		}
		errc <- err
	}()
	f, files, err := readFrame(b)
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != typeState || len(f.State) != len(state) || len(files) != 1 {
		t.Fatalf("got frame %q with %d state bytes and %d files; want state, %d bytes, 1 file", f.Type, len(f.State), len(files), len(state))
	}
	if _, err := files[0].Write([]byte("through the passed descriptor")); err != nil {
		t.Fatal(err)
	}
	files[0].Close()
	buf := make([]byte, 64)
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "through the passed descriptor" {
		t.Fatalf("read %q, %v from the pipe", buf[:n], err)
	}
	f, files, err = readFrame(b)
	if err != nil || f.Type != typeAck || len(files) != 0 {
		t.Fatalf("second frame %q with %d files, %v; want ack with none", f.Type, len(files), err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestFrameEndsCleanly: a peer hanging up between frames is io.EOF, in the
// middle of one an error too, never a frame.
func TestFrameEndsCleanly(t *testing.T) {
	a, b := socketpair(t)
	a.Write([]byte{0, 0, 1, 0, '{'}) // a header of 256 bytes and one of them
	a.Close()
	if _, _, err := readFrame(b); err == nil {
		t.Fatal("a truncated frame was read as a frame")
	}
	c, d := socketpair(t)
	c.Close()
	if _, _, err := readFrame(d); !errors.Is(err, io.EOF) {
		t.Fatalf("hang-up between frames: %v, want io.EOF", err)
	}
}

func listen(t *testing.T) (*Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), SocketName)
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestHandover: the whole exchange between two ends: the successor gets
// the state and a working file, the predecessor the acknowledgement, the
// socket is private.
func TestHandover(t *testing.T) {
	l, path := listen(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("handoff socket mode %v, want 0600", fi.Mode().Perm())
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	errc := make(chan error, 1)
	go func() {
		defer w.Close()
		s, err := l.Accept()
		if err != nil {
			errc <- err
			return
		}
		if s.PID != os.Getpid() {
			errc <- errors.New("successor pid not reported")
			return
		}
		errc <- s.Hand(map[string]string{"iface": "weft"}, map[string]*os.File{"tun": w}, 5*time.Second)
	}()
	got, err := Request(ctxT(t), path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if err := <-errc; err != nil {
		t.Fatalf("predecessor: %v", err)
	}
	var st map[string]string
	if err := json.Unmarshal(got.State, &st); err != nil || st["iface"] != "weft" {
		t.Fatalf("state %s (%v), want iface weft", got.State, err)
	}
	f := got.Files["tun"]
	if f == nil {
		t.Fatalf("files %v, want tun", got.Files)
	}
	if _, err := f.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read %q, %v through the handed-over file", buf, err)
	}
}

// TestRequestWithoutHandover: every way a handover does not happen gives
// the successor an error it can branch on, never a hang.
func TestRequestWithoutHandover(t *testing.T) {
	tests := []struct {
		name string
		// predecessor plays the running daemon on l (nil: none listens).
		predecessor func(t *testing.T, l *Listener)
		want        error
	}{
		{"no socket", nil, ErrNoPredecessor},
		{"stale socket", func(t *testing.T, l *Listener) { l.ln.Close() }, ErrNoPredecessor},
		{"other uid", func(t *testing.T, l *Listener) {
			l.uid = os.Geteuid() + 1
			go l.Accept()
		}, ErrRefused},
		{"refused", func(t *testing.T, l *Listener) {
			go func() {
				if s, err := l.Accept(); err == nil {
					s.Refuse("another successor is taking over")
				}
			}()
		}, ErrRefused},
		{"dies mid-handoff", func(t *testing.T, l *Listener) {
			go func() {
				if s, err := l.Accept(); err == nil {
					s.Close() // as a predecessor killed after the hello
				}
			}()
		}, ErrPredecessorGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), SocketName)
			if tt.predecessor != nil {
				l, err := Listen(path)
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				tt.predecessor(t, l)
			}
			got, err := Request(ctxT(t), path)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Request: %v, want %v", err, tt.want)
			}
			if got != nil {
				t.Fatal("files returned with an error")
			}
		})
	}
}

// TestListenerRefusesOtherVersions: a successor speaking another version
// is refused with a reason, and the listener goes on to the next one.
func TestListenerRefusesOtherVersions(t *testing.T) {
	l, path := listen(t)
	accepted := make(chan *Successor, 1)
	go func() {
		if s, err := l.Accept(); err == nil {
			accepted <- s
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := writeFrame(c.(*net.UnixConn), frame{Type: typeHello, Version: Version + 1}, nil); err != nil {
		t.Fatal(err)
	}
	f, _, err := readFrame(c.(*net.UnixConn))
	if err != nil || f.Type != typeRefuse || f.Reason == "" {
		t.Fatalf("answer %+v, %v; want a refusal with a reason", f, err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := Request(ctxT(t), path)
		errc <- err
	}()
	select {
	case s := <-accepted:
		s.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the listener did not accept the next successor after a refusal")
	}
	if err := <-errc; !errors.Is(err, ErrPredecessorGone) {
		t.Fatalf("Request: %v, want %v", err, ErrPredecessorGone)
	}
}

// TestListenerKeepsASuccessorsSocket: closing a predecessor's listener
// leaves the socket of a successor that took its path.
func TestListenerKeepsASuccessorsSocket(t *testing.T) {
	old, path := listen(t)
	next, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	old.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the successor's socket is gone: %v", err)
	}
}
