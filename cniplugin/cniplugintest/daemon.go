// Package cniplugintest is a fake weft daemon for tests of the CNI plugin
// and of what drives it: the daemon's local API (package api) on a unix
// socket, with allocations in an in-memory map. Like httptest.Server it
// starts serving at once and stops with Close.
package cniplugintest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"sync"

	"github.com/weftnet/weft/api"
)

// Config of a fake daemon. Every field has a default.
type Config struct {
	// Socket is where the daemon listens; it must not exist yet. Default:
	// weft.sock in a new temporary directory, removed by Close.
	Socket string
	// Pool is the range addresses are handed out from (also the PodCIDR of
	// every allocation); default 10.32.0.0/16. The first address (the
	// network) is never handed out. An IPv6 Pool makes the daemon IPv6
	// only, as weft's is with an IPv6 --pod-cidr.
	Pool netip.Prefix
	// Gateway is the pods' link-local next hop; default 169.254.1.1.
	Gateway netip.Addr
	// Pool6, if set, makes the daemon dual stack, as weft's is: each
	// allocation also gets the address at the same offset of Pool6 as its
	// IPv4 address has in Pool, with the next hop fe80::1.
	Pool6 netip.Prefix
	// MTU handed to pods; default 1420.
	MTU int
	// Capacity is how many addresses may be allocated at once; 0 means as
	// many as Pool holds. Beyond it, allocate answers code "full".
	Capacity int
}

type key struct{ containerID, ifName string }

// Daemon is a running fake daemon. Its methods are safe for concurrent use.
type Daemon struct {
	cfg    Config
	tmpDir string
	ln     net.Listener
	srv    *http.Server
	done   chan struct{}

	mu     sync.Mutex // guards the fields below
	allocs map[key]api.Allocation
	used   map[netip.Addr]bool
	next   netip.Addr
	ready  api.Ready
	fail   map[string]*api.Error
	calls  map[string]int
}

// Start listens on cfg.Socket and serves the API until Close.
func Start(cfg Config) (*Daemon, error) {
	d := &Daemon{
		allocs: map[key]api.Allocation{},
		used:   map[netip.Addr]bool{},
		ready:  api.Ready{Ready: true},
		fail:   map[string]*api.Error{},
		calls:  map[string]int{},
		done:   make(chan struct{}),
	}
	if !cfg.Pool.IsValid() {
		cfg.Pool = netip.MustParsePrefix("10.32.0.0/16")
	}
	cfg.Pool = cfg.Pool.Masked()
	if !cfg.Gateway.IsValid() {
		cfg.Gateway = netip.MustParseAddr("169.254.1.1")
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1420
	}
	if cfg.Socket == "" {
		dir, err := os.MkdirTemp("", "weft-fake-daemon-")
		if err != nil {
			return nil, fmt.Errorf("fake daemon: %w", err)
		}
		d.tmpDir = dir
		cfg.Socket = dir + "/weft.sock"
	}
	d.cfg = cfg
	d.next = cfg.Pool.Addr().Next()

	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		d.removeTmp()
		return nil, fmt.Errorf("fake daemon: listen on %s: %w", cfg.Socket, err)
	}
	if err := os.Chmod(cfg.Socket, 0o600); err != nil {
		ln.Close()
		d.removeTmp()
		return nil, fmt.Errorf("fake daemon: %w", err)
	}
	d.ln = ln
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathReady, d.handleReady)
	mux.HandleFunc("POST "+api.PathCNIAllocate, d.handleAllocate)
	mux.HandleFunc("POST "+api.PathCNIRelease, d.handleRelease)
	mux.HandleFunc("POST "+api.PathCNICheck, d.handleCheck)
	mux.HandleFunc("POST "+api.PathCNIGC, d.handleGC)
	d.srv = &http.Server{Handler: mux}
	go func() {
		defer close(d.done)
		_ = d.srv.Serve(ln)
	}()
	return d, nil
}

// Socket is the path the daemon listens on.
func (d *Daemon) Socket() string { return d.cfg.Socket }

// Close stops serving, waits for the server to end and removes the socket
// (and the temporary directory Start made). Allocations are forgotten.
func (d *Daemon) Close() error {
	err := d.srv.Close()
	<-d.done
	os.Remove(d.cfg.Socket)
	d.removeTmp()
	return err
}

func (d *Daemon) removeTmp() {
	if d.tmpDir != "" {
		os.RemoveAll(d.tmpDir)
	}
}

// SetReady sets what GET /v1/ready answers.
func (d *Daemon) SetReady(ready bool, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ready = api.Ready{Ready: ready, Reason: reason}
}

// Fail makes every call to path answer e (nil: answer normally again).
func (d *Daemon) Fail(path string, e *api.Error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e == nil {
		delete(d.fail, path)
		return
	}
	d.fail[path] = e
}

// Forget drops an allocation as if the daemon had lost it.
func (d *Daemon) Forget(containerID, ifName string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.releaseLocked(key{containerID, ifName})
}

// Allocations lists what is allocated, ordered by address.
func (d *Daemon) Allocations() []api.Allocation {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Allocation, 0, len(d.allocs))
	for _, a := range d.allocs {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Addr().Less(out[j].Address.Addr()) })
	return out
}

// Calls is how many requests path has received.
func (d *Daemon) Calls(path string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[path]
}

// begin counts the call and answers the injected failure, if any; it
// returns false when the request is answered already.
func (d *Daemon) begin(w http.ResponseWriter, r *http.Request, in any) bool {
	d.mu.Lock()
	d.calls[r.URL.Path]++
	e := d.fail[r.URL.Path]
	d.mu.Unlock()
	if e != nil {
		writeError(w, e)
		return false
	}
	if in != nil {
		if err := json.NewDecoder(r.Body).Decode(in); err != nil {
			writeError(w, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: "decode request: " + err.Error()})
			return false
		}
	}
	return true
}

func (d *Daemon) handleReady(w http.ResponseWriter, r *http.Request) {
	if !d.begin(w, r, nil) {
		return
	}
	d.mu.Lock()
	ready := d.ready
	d.mu.Unlock()
	writeJSON(w, ready)
}

func (d *Daemon) handleAllocate(w http.ResponseWriter, r *http.Request) {
	var att api.Attachment
	if !d.begin(w, r, &att) {
		return
	}
	if att.ContainerID == "" || att.IfName == "" {
		writeError(w, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: "containerID and ifName are required"})
		return
	}
	alloc, err := d.allocate(att)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, alloc)
}

func (d *Daemon) allocate(att api.Attachment) (api.Allocation, *api.Error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := key{att.ContainerID, att.IfName}
	if a, ok := d.allocs[k]; ok {
		return a, nil
	}
	full := &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeFull,
		Message: fmt.Sprintf("no free address in %s", d.cfg.Pool), Hint: "delete pods or widen --pod-cidr"}
	if d.cfg.Capacity > 0 && len(d.allocs) >= d.cfg.Capacity {
		return api.Allocation{}, full
	}
	start := d.next
	for d.used[d.next] {
		d.next = d.advance(d.next)
		if d.next == start {
			return api.Allocation{}, full
		}
	}
	addr := d.next
	d.next = d.advance(addr)
	d.used[addr] = true
	a := api.Allocation{
		Attachment: att,
		Address:    netip.PrefixFrom(addr, 32),
		Gateway:    d.cfg.Gateway,
		MTU:        d.cfg.MTU,
		PodCIDR:    d.cfg.Pool,
	}
	if addr.Is6() {
		// An IPv6 Pool: an IPv6-only daemon.
		a.Address, a.Gateway, a.PodCIDR = netip.Prefix{}, netip.Addr{}, netip.Prefix{}
		a.Address6 = netip.PrefixFrom(addr, 128)
		a.Gateway6 = netip.MustParseAddr("fe80::1")
		a.PodCIDR6 = d.cfg.Pool
	} else if d.cfg.Pool6.IsValid() {
		off := addrOffset(d.cfg.Pool.Masked().Addr(), addr)
		a6 := d.cfg.Pool6.Masked().Addr().As16()
		for i := 15; i >= 12; i-- {
			a6[i] |= byte(off >> (8 * (15 - i)))
		}
		a.Address6 = netip.PrefixFrom(netip.AddrFrom16(a6), 128)
		a.Gateway6 = netip.MustParseAddr("fe80::1")
		a.PodCIDR6 = d.cfg.Pool6
	}
	d.allocs[k] = a
	return a, nil
}

// addrOffset is how far IPv4 address a lies after base.
func addrOffset(base, a netip.Addr) uint32 {
	x, y := a.As4(), base.As4()
	return (uint32(x[0])<<24 | uint32(x[1])<<16 | uint32(x[2])<<8 | uint32(x[3])) -
		(uint32(y[0])<<24 | uint32(y[1])<<16 | uint32(y[2])<<8 | uint32(y[3]))
}

// advance is the next address of the pool after a, wrapping around and
// skipping the network address.
func (d *Daemon) advance(a netip.Addr) netip.Addr {
	n := a.Next()
	if !d.cfg.Pool.Contains(n) {
		n = d.cfg.Pool.Addr().Next()
	}
	return n
}

func (d *Daemon) releaseLocked(k key) (api.Allocation, bool) {
	a, ok := d.allocs[k]
	if ok {
		delete(d.allocs, k)
		delete(d.used, a.Address.Addr())
	}
	return a, ok
}

func (d *Daemon) handleRelease(w http.ResponseWriter, r *http.Request) {
	var att api.Attachment
	if !d.begin(w, r, &att) {
		return
	}
	d.mu.Lock()
	a, _ := d.releaseLocked(key{att.ContainerID, att.IfName})
	d.mu.Unlock()
	writeJSON(w, a)
}

func (d *Daemon) handleCheck(w http.ResponseWriter, r *http.Request) {
	var att api.Attachment
	if !d.begin(w, r, &att) {
		return
	}
	d.mu.Lock()
	a, ok := d.allocs[key{att.ContainerID, att.IfName}]
	d.mu.Unlock()
	if !ok {
		writeError(w, &api.Error{Status: http.StatusNotFound, Code: api.CodeUnknown,
			Message: fmt.Sprintf("no allocation for container %s interface %s", att.ContainerID, att.IfName)})
		return
	}
	writeJSON(w, a)
}

func (d *Daemon) handleGC(w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	if !d.begin(w, r, &req) {
		return
	}
	valid := map[key]bool{}
	for _, a := range req.Valid {
		valid[key{a.ContainerID, a.IfName}] = true
	}
	resp := api.GCResponse{Released: []api.Allocation{}}
	d.mu.Lock()
	for k := range d.allocs {
		if !valid[k] {
			a, _ := d.releaseLocked(k)
			resp.Released = append(resp.Released, a)
		}
	}
	d.mu.Unlock()
	writeJSON(w, resp)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *api.Error) {
	status := e.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}
