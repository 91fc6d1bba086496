package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/weftnet/weft/api"
)

// backend is what the local API serves; the daemon implements it. Every
// method may be called from many goroutines at once.
type backend interface {
	Ready() api.Ready
	Allocate(ctx context.Context, a api.Attachment) (api.Allocation, error)
	Release(ctx context.Context, a api.Attachment) (api.Allocation, bool, error)
	Check(ctx context.Context, a api.Attachment) (api.Allocation, error)
	GC(ctx context.Context, valid []api.Attachment) ([]api.Allocation, error)
	Status(section string) (any, error)
	Rmpeer(ctx context.Context, node string) (string, error)
	Why(ctx context.Context, req api.WhyRequest) (WhyAnswer, error)
	// RotateKey starts a rotation of the node's WireGuard key and returns
	// the next public key.
	RotateKey(ctx context.Context) (string, error)
}

// apiServer serves the backend on a unix socket, mode 0600.
type apiServer struct {
	socket  string
	b       backend
	log     *slog.Logger
	metrics *metrics // nil: nothing is counted
}

// maxRequest bounds a request body; a GC of many thousand attachments fits.
const maxRequest = 8 << 20

func (s *apiServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathReady, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.b.Ready())
	})
	mux.HandleFunc("POST "+api.PathCNIAllocate, s.cni(opAdd, s.attachment(func(ctx context.Context, a api.Attachment) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, api.AllocateWait)
		defer cancel()
		return s.b.Allocate(ctx, a)
	})))
	mux.HandleFunc("POST "+api.PathCNIRelease, s.cni(opDel, s.attachment(func(ctx context.Context, a api.Attachment) (any, error) {
		al, _, err := s.b.Release(ctx, a)
		return al, err
	})))
	mux.HandleFunc("POST "+api.PathCNICheck, s.cni(opCheck, s.attachment(func(ctx context.Context, a api.Attachment) (any, error) {
		return s.b.Check(ctx, a)
	})))
	mux.HandleFunc("POST "+api.PathCNIGC, s.cni(opGC, func(r *http.Request) (any, error) {
		var req api.GCRequest
		if err := decodeRequest(r, &req); err != nil {
			return nil, err
		}
		released, err := s.b.GC(r.Context(), req.Valid)
		return api.GCResponse{Released: released}, err
	}))
	mux.HandleFunc("GET "+api.PathStatus, s.status(""))
	for _, sec := range []string{"peers", "ipam", "policy"} {
		mux.HandleFunc("GET "+api.PathStatus+"/"+sec, s.status(sec))
	}
	mux.HandleFunc("POST "+api.PathRmpeer, func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Node string `json:"node"`
		}
		if !decode(w, r, &req) {
			return
		}
		if req.Node == "" {
			writeError(w, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: "rmpeer: no node named"})
			return
		}
		msg, err := s.b.Rmpeer(r.Context(), req.Node)
		s.reply(w, r, map[string]string{"message": msg}, err)
	})
	mux.HandleFunc("POST "+api.PathRotateKey, func(w http.ResponseWriter, r *http.Request) {
		next, err := s.b.RotateKey(r.Context())
		s.reply(w, r, api.RotateKeyResponse{NextPublicKey: next}, err)
	})
	mux.HandleFunc("POST "+api.PathPolicyWhy, func(w http.ResponseWriter, r *http.Request) {
		var req api.WhyRequest
		if !decode(w, r, &req) {
			return
		}
		if req.Src == "" || req.Dst == "" {
			writeError(w, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: "why: src and dst are required"})
			return
		}
		out, err := s.b.Why(r.Context(), req)
		s.reply(w, r, out, err)
	})
	return mux
}

// cni serves one CNI operation and counts it, with the time the daemon
// took, in the metrics.
func (s *apiServer) cni(op string, serve func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		out, err := serve(r)
		s.metrics.observeCNI(op, time.Since(start), err)
		s.reply(w, r, out, err)
	}
}

// attachment serves a request that names one attachment.
func (s *apiServer) attachment(f func(context.Context, api.Attachment) (any, error)) func(*http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		var a api.Attachment
		if err := decodeRequest(r, &a); err != nil {
			return nil, err
		}
		if a.ContainerID == "" || a.IfName == "" {
			return nil, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest,
				Message: "containerID and ifName are required"}
		}
		return f(r.Context(), a)
	}
}

func (s *apiServer) status(section string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		out, err := s.b.Status(section)
		s.reply(w, r, out, err)
	}
}

func (s *apiServer) reply(w http.ResponseWriter, r *http.Request, out any, err error) {
	if err == nil {
		writeJSON(w, http.StatusOK, out)
		return
	}
	var ae *api.Error
	if !errors.As(err, &ae) {
		ae = &api.Error{Status: http.StatusInternalServerError, Code: api.CodeInternal, Message: err.Error()}
		s.log.Warn("api request failed", "path", r.URL.Path, "err", err)
	}
	writeError(w, ae)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := decodeRequest(r, v); err != nil {
		writeError(w, err)
		return false
	}
	return true
}

// decodeRequest reads the JSON body of r into v; the error is a bad-request
// api error.
func decodeRequest(r *http.Request, v any) *api.Error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest,
			Message: fmt.Sprintf("malformed request: %v", err)}
	}
	return nil
}

func writeError(w http.ResponseWriter, e *api.Error) {
	status := e.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// listenPrivate listens on the unix socket path with mode 0600 from its
// first moment: the socket is made in a fresh directory only root can
// enter, given its mode there, and then renamed into place, so no other
// user can ever connect to it (a chmod after the listen leaves a window in
// which the socket has the umask's mode). A stale socket at path is
// replaced.
func listenPrivate(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".listen-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, filepath.Base(path))
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return ln, nil
}

// Run serves until ctx is done. A stale socket of an earlier run is removed;
// a socket another live daemon answers on is an error.
func (s *apiServer) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(s.socket), 0o755); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", s.socket, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another weft daemon answers on %s: stop it first", s.socket)
	}
	ln, err := listenPrivate(s.socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serve %s: %w", s.socket, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	<-done
	_ = os.Remove(s.socket)
	return nil
}
