// Package api is the local HTTP+JSON API of the weft daemon on its unix
// socket (RUN_DIR/weft.sock, mode 0600): the types both sides speak and a
// client used by the CNI plugin and the weft command line.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"
)

// ErrDaemonNotRunning is returned when nothing answers on the socket.
var ErrDaemonNotRunning = errors.New("the weft daemon is not running on this node")

// Client talks to the daemon over its unix socket. It is safe for concurrent use.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client of the daemon listening on socket; every call
// gives up after timeout.
func NewClient(socket string, timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{Socket: socket, http: &http.Client{Transport: tr, Timeout: timeout}}
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
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://weft"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		if isNotRunning(err) {
			return fmt.Errorf("%w (nothing listens on %s)", ErrDaemonNotRunning, c.Socket)
		}
		return fmt.Errorf("talk to the weft daemon on %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read answer of the weft daemon: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("weft daemon answered %s: %s", resp.Status, bytes.TrimSpace(data))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer of the weft daemon: %w", err)
	}
	return nil
}

func isNotRunning(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist)
}
