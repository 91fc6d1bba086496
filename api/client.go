// Package api is the local HTTP+JSON API of the weft daemon on its unix
// socket (RUN_DIR/weft.sock, mode 0600): the types both sides speak and a
// client used by the CNI plugin and the weft command line.
//
// The daemon serves the API with net/http. The client speaks the few bytes
// of HTTP/1.0 it needs itself (http10.go) rather than through net/http:
// the CNI plugin is a new process for every call, and linking net/http into
// it makes Go initialize net/http and the packages that wait for it
// (prometheus, OpenAPI models, ...) before the plugin can run, about 1 ms
// of CPU per call, which is what 20 pods starting at once on a small node
// wait for (BENCHMARKS.md, CNI plugin).
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// ErrDaemonNotRunning is returned when nothing answers on the socket.
var ErrDaemonNotRunning = errors.New("the weft daemon is not running on this node")

// Methods of the API.
const (
	MethodGet  = "GET"
	MethodPost = "POST"
)

// maxAnswer bounds what Do reads of an answer.
const maxAnswer = 16 << 20

// Client talks to the daemon over its unix socket. It is safe for
// concurrent use; every call opens its own connection.
type Client struct {
	Socket  string
	timeout time.Duration
}

// NewClient returns a client of the daemon listening on socket; every call
// gives up after timeout (0: only when its context ends).
func NewClient(socket string, timeout time.Duration) *Client {
	return &Client{Socket: socket, timeout: timeout}
}

// Error is what the daemon answers with a non-2xx status.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`    // machine-readable: "full", "not-ready", "bad-request", ...
	Message string `json:"message"` // what is wrong
	Hint    string `json:"hint,omitempty"`
}

func (e *Error) Error() string {
	if e.Hint != "" {
		return e.Message + " (" + e.Hint + ")"
	}
	return e.Message
}

// Do sends in (nil for GET) as JSON to path and decodes the answer into out
// (nil to discard it).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	if !validPath(path) {
		return fmt.Errorf("bad API path %q", path)
	}
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = b
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	data, err := c.roundTrip(ctx, method, path, body)
	if err != nil {
		if isNotRunning(err) {
			return fmt.Errorf("%w (nothing listens on %s)", ErrDaemonNotRunning, c.Socket)
		}
		return fmt.Errorf("talk to the weft daemon on %s: %w", c.Socket, err)
	}
	resp, err := parseResponse(data)
	if err != nil {
		return fmt.Errorf("read answer of the weft daemon on %s: %w", c.Socket, err)
	}
	if resp.Status/100 != 2 {
		e := &Error{Status: resp.Status}
		if json.Unmarshal(resp.Body, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("weft daemon answered %d %s: %s", resp.Status, resp.Reason, bytes.TrimSpace(resp.Body))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(resp.Body, out); err != nil {
		return fmt.Errorf("decode answer of the weft daemon: %w", err)
	}
	return nil
}

// roundTrip sends one request on a new connection and reads the whole
// answer, which the daemon ends by closing the connection (HTTP/1.0).
func (c *Client) roundTrip(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// The context's end unblocks a read or write in progress.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(formatRequest(method, path, body)); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("send request: %w", err))
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(&limitedConn{conn, maxAnswer + 1}); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("read answer: %w", err))
	}
	if buf.Len() > maxAnswer {
		return nil, fmt.Errorf("answer longer than %d bytes", maxAnswer)
	}
	return buf.Bytes(), nil
}

// ctxErr prefers the context's error (a deadline the caller set) to the
// I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// limitedConn reads at most n bytes of a connection.
type limitedConn struct {
	c net.Conn
	n int64
}

func (l *limitedConn) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errEOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= int64(n)
	return n, err
}

func isNotRunning(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist)
}
