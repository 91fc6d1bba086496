package api

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve runs h as the daemon does, with net/http on a unix socket, and
// returns the socket's path.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "weft.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return sock
}

// TestClientAgainstNetHTTP: the client's HTTP/1.0 works against the
// net/http server the daemon runs, for every shape of answer it gives.
func TestClientAgainstNetHTTP(t *testing.T) {
	big := strings.Repeat("x", 3<<20) // past every buffer: net/http would chunk it for HTTP/1.1
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ready", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"ready": true})
	})
	mux.HandleFunc("POST /v1/echo", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "want JSON", http.StatusUnsupportedMediaType)
			return
		}
		var v map[string]string
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(v)
	})
	mux.HandleFunc("GET /v1/big", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"big": big})
	})
	mux.HandleFunc("POST /v1/full", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(Error{Code: CodeFull, Message: "the pod range is full", Hint: "free some"})
	})
	mux.HandleFunc("GET /v1/plain", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such thing", http.StatusTeapot)
	})
	c := NewClient(serve(t, mux), 5*time.Second)
	ctx := context.Background()

	var ready struct{ Ready bool }
	if err := c.Do(ctx, MethodGet, "/v1/ready", nil, &ready); err != nil || !ready.Ready {
		t.Errorf("GET ready = %+v, %v", ready, err)
	}
	var echo map[string]string
	if err := c.Do(ctx, MethodPost, "/v1/echo", map[string]string{"containerID": "abc"}, &echo); err != nil || echo["containerID"] != "abc" {
		t.Errorf("POST echo = %v, %v", echo, err)
	}
	var b map[string]string
	if err := c.Do(ctx, MethodGet, "/v1/big", nil, &b); err != nil || b["big"] != big {
		t.Errorf("GET big: %d bytes, %v", len(b["big"]), err)
	}
	var apiErr *Error
	err := c.Do(ctx, MethodPost, "/v1/full", struct{}{}, nil)
	if !errors.As(err, &apiErr) || apiErr.Status != 503 || apiErr.Code != CodeFull || apiErr.Hint != "free some" {
		t.Errorf("POST full = %v (%#v)", err, apiErr)
	}
	err = c.Do(ctx, MethodGet, "/v1/plain", nil, nil)
	if !errors.As(err, &apiErr) || apiErr.Status != 418 || !strings.Contains(apiErr.Message, "no such thing") {
		t.Errorf("GET plain = %v", err)
	}
	if err := c.Do(ctx, MethodGet, "/v1/ready x", nil, nil); err == nil || !strings.Contains(err.Error(), "bad API path") {
		t.Errorf("a path with a space: %v", err)
	}
}

func TestClientDaemonNotRunning(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "weft.sock"), time.Second)
	if err := c.Do(context.Background(), MethodGet, PathReady, nil, nil); !errors.Is(err, ErrDaemonNotRunning) {
		t.Errorf("no socket: %v, want ErrDaemonNotRunning", err)
	}
}

// TestClientTimeout: a daemon that accepts and never answers costs the
// caller its timeout, and the error says it was a deadline.
func TestClientTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	sock := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	start := time.Now()
	err := NewClient(sock, 200*time.Millisecond).Do(context.Background(), MethodPost, PathCNIAllocate, struct{}{}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent daemon: %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %v, want about 200ms", d)
	}
	// The caller's context counts too, without a client timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := NewClient(sock, 0).Do(ctx, MethodGet, PathReady, nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent daemon, context deadline: %v", err)
	}
}

func TestParseResponse(t *testing.T) {
	for _, tc := range []struct {
		in         string
		status     int
		body, fail string
	}{
		{in: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", status: 200, body: "{}"},
		{in: "HTTP/1.0 200 OK\r\n\r\n{\"a\":1}", status: 200, body: `{"a":1}`},
		{in: "HTTP/1.1 204 No Content\r\n\r\n", status: 204},
		{in: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk", status: 200, body: "{}"},
		{in: "", fail: "without an answer"},
		{in: "HTTP/1.1 200 OK\r\nContent-Le", fail: "cut short in its headers"},
		{in: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", fail: "cut short: 2 of 10"},
		{in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", fail: "Transfer-Encoding"},
		{in: "SSH-2.0-OpenSSH\r\n\r\n", fail: "not an HTTP answer"},
		{in: "HTTP/1.1 2000 OK\r\n\r\n", fail: "bad status code"},
		{in: "HTTP/1.1 +20 OK\r\n\r\n", fail: "bad status code"},
		{in: "HTTP/1.1 200 OK\r\nno colon\r\n\r\n", fail: "malformed header"},
		{in: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", fail: "bad Content-Length"},
		{in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}", fail: "bad Content-Length"},
	} {
		r, err := parseResponse([]byte(tc.in))
		switch {
		case tc.fail != "" && (err == nil || !strings.Contains(err.Error(), tc.fail)):
			t.Errorf("parse %q: %v, want an error with %q", tc.in, err, tc.fail)
		case tc.fail == "" && err != nil:
			t.Errorf("parse %q: %v", tc.in, err)
		case tc.fail == "" && (r.Status != tc.status || string(r.Body) != tc.body):
			t.Errorf("parse %q = %d %q, want %d %q", tc.in, r.Status, r.Body, tc.status, tc.body)
		}
	}
}

// FuzzParseResponse: any bytes from the socket give an answer or an
// error, never a panic, and an answer's body is within what was read.
func FuzzParseResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"))
	f.Add([]byte("HTTP/1.0 503 Service Unavailable\r\n\r\n{\"code\":\"full\",\"message\":\"m\"}"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parseResponse(data)
		if err != nil {
			return
		}
		if r.Status < 100 || r.Status > 999 {
			t.Errorf("status %d", r.Status)
		}
		if len(r.Body) > len(data) {
			t.Errorf("body of %d bytes from %d bytes of input", len(r.Body), len(data))
		}
	})
}
