package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/weftnet/weft/crypto"
	"github.com/weftnet/weft/daemon/handoff"
)

// errHandingOver ends the errgroup of Run when a successor asks.
var errHandingOver = errors.New("a successor asks for the data path")

const (
	// handoffTimeout bounds a successor's wait for its predecessor, which
	// stops its gossip, API and state before it answers.
	handoffTimeout = 30 * time.Second
	// ackTimeout bounds the predecessor's wait for the acknowledgement.
	ackTimeout = 10 * time.Second
	// tunBusyWait is how long a new daemon retries a TUN still held by a
	// predecessor that is exiting without a handover.
	tunBusyWait = 10 * time.Second
)

// handoffState is what a daemon hands its successor with the TUN file.
type handoffState struct {
	Iface string `json:"iface"`
	// Peers of the device, in UAPI set syntax; empty in kernel mode.
	Peers string `json:"peers,omitempty"`
	// LastHandshake of any peer: the successor's first handshakes must
	// not come too soon after it (crypto.Handover).
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
}

func (a *agent) handoffPath() string { return filepath.Join(a.cfg.RunDir, handoff.SocketName) }

// takeOver asks a daemon already running on this node for its data path.
// Nil means there is none to take (no predecessor, a kernel tunnel, or a
// failed exchange): the tunnel is then opened by name, as after a crash.
func (a *agent) takeOver(ctx context.Context) *crypto.Handover {
	ctx, cancel := context.WithTimeout(ctx, handoffTimeout)
	defer cancel()
	start := time.Now()
	r, err := handoff.Request(ctx, a.handoffPath())
	switch {
	case errors.Is(err, handoff.ErrNoPredecessor):
		return nil
	case err != nil:
		a.log.Warn("could not take the data path over from the running daemon; reattaching to the tunnel instead", "err", err)
		return nil
	}
	defer r.Close()
	var st handoffState
	if err := json.Unmarshal(r.State, &st); err != nil {
		a.log.Warn("the running daemon handed over a state this one cannot read; reattaching to the tunnel instead", "err", err)
		return nil
	}
	f := r.Files["tun"]
	if f == nil {
		a.log.Info("took over from the running daemon; its tunnel is in the kernel, nothing to carry", "pid", r.PID)
		return nil
	}
	delete(r.Files, "tun")
	a.log.Info("took the data path over from the running daemon", "pid", r.PID, "iface", st.Iface, "took", time.Since(start).Round(time.Millisecond))
	return &crypto.Handover{Name: st.Iface, TUN: f, Peers: st.Peers, LastHandshake: st.LastHandshake}
}

// openTunnel opens the tunnel on the handed-over TUN, or by name. A TUN
// still held by an exiting predecessor is retried for a while.
func (a *agent) openTunnel(ctx context.Context, h *crypto.Handover) error {
	deadline := time.Now().Add(tunBusyWait)
	logged := false
	for {
		t, err := crypto.OpenTunnel(crypto.TunnelConfig{
			Name: a.cfg.Iface, Mode: a.cfg.WGMode, PrivateKey: a.key, ListenPort: a.cfg.WGPort, MTU: a.mtu,
			Logger: a.log, Handover: h, WireGuardGoIO: a.cfg.UserspaceIO == "wireguard-go",
		})
		if err == nil {
			a.tun = t
			return nil
		}
		switch {
		case h != nil:
			a.log.Warn("could not run on the handed-over TUN; reattaching to it by name", "err", err)
			h = nil
			continue
		case !errors.Is(err, crypto.ErrTUNBusy) || time.Now().After(deadline):
			return err
		case !logged:
			a.log.Info("the TUN is still held, by a daemon that is stopping?; waiting for it", "iface", a.cfg.Iface)
			logged = true
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// listenHandoff opens the handoff socket and passes every successor that
// asks to a.successors; one is taken, later ones are refused. Without the
// socket the daemon runs all the same.
func (a *agent) listenHandoff() {
	ln, err := handoff.Listen(a.handoffPath())
	if err != nil {
		a.log.Warn("no handoff socket: a new daemon will reattach to the tunnel as after a crash", "err", err)
		return
	}
	a.handoffLn = ln
	a.handoffWG.Add(1)
	go func() {
		defer a.handoffWG.Done()
		for {
			s, err := ln.Accept()
			if err != nil {
				return // closed
			}
			select {
			case a.successors <- s:
			default:
				s.Refuse("another daemon is taking over already")
			}
		}
	}()
}

// awaitSuccessor returns the successor that asked while the daemon ran or
// stopped; when stopping is true and there is none yet, it waits up to
// --handoff-wait for one.
func (a *agent) awaitSuccessor(stopping bool) *handoff.Successor {
	select {
	case s := <-a.successors:
		return s
	default:
	}
	if !stopping || a.cfg.HandoffWait <= 0 || a.handoffLn == nil {
		return nil
	}
	a.log.Info("waiting for a new daemon to take the data path over", "wait", a.cfg.HandoffWait)
	select {
	case s := <-a.successors:
		return s
	case <-time.After(a.cfg.HandoffWait):
		return nil
	}
}

// handOver gives the tunnel to s and reports whether s has it. On failure
// the tunnel is closed as at any stop: the successor reattaches by name.
func (a *agent) handOver(s *handoff.Successor) bool {
	start := time.Now()
	h, err := a.tun.Detach()
	if errors.Is(err, crypto.ErrNotUserspace) {
		// A kernel device needs nothing carried over; the successor
		// just has to know this daemon is gone.
		err = s.Hand(handoffState{Iface: a.tun.Name()}, nil, ackTimeout)
		return err == nil
	}
	if err != nil {
		a.log.Warn("could not detach the tunnel for the new daemon; it will reattach", "err", err)
		s.Close()
		return false
	}
	defer h.TUN.Close() // the successor holds its own copy
	if err := s.Hand(handoffState{Iface: h.Name, Peers: h.Peers, LastHandshake: h.LastHandshake}, map[string]*os.File{"tun": h.TUN}, ackTimeout); err != nil {
		a.log.Warn("handover failed; the new daemon reattaches to the tunnel", "pid", s.PID, "err", err)
		return false
	}
	a.log.Info("data path handed over to the new daemon", "pid", s.PID, "took", time.Since(start).Round(time.Microsecond))
	return true
}

// closeHandoff stops the handoff socket and turns away successors that
// asked too late.
func (a *agent) closeHandoff() {
	if a.handoffLn == nil {
		return
	}
	a.handoffLn.Close()
	a.handoffWG.Wait()
	for {
		select {
		case s := <-a.successors:
			s.Close()
		default:
			return
		}
	}
}
