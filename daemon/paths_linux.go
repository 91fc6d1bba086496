package daemon

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// judgePaths judges each direct path, tells the relay protocol which peers
// this node cannot reach directly and takes from it the relay of every pair
// that needs one, and re-arms the keepalive of relayed peers so their
// direct path is tried again.
//
// A peer with a probe address is judged by the probes (liveness.go): down
// after a few lost in a row, up again after a few answered. A peer without
// one (an older daemon), or before the probes have judged, by what
// WireGuard received (relay.go).
func (a *agent) judgePaths(devPeers []wgtypes.Peer, now time.Time) error {
	rx := make(map[wgtypes.Key]int64, len(devPeers))
	for _, p := range devPeers {
		rx[p.PublicKey] = p.ReceiveBytes
	}
	results := a.probes.Results()
	natChanged := a.judgeNAT()
	a.mu.Lock()
	var unreachable, members, reached []string
	for name, kp := range a.peers {
		if r, ok := rx[kp.PublicKey]; ok {
			kp.probe.observe(r, now)
		} else {
			kp.probe.unseen(now)
		}
		if !kp.Alive || kp.KeyRefused {
			continue
		}
		members = append(members, name)
		healthy := kp.probe.healthy(now)
		if r, ok := results[name]; ok && kp.ProbeAddr.IsValid() && r.State != pathUnknown {
			healthy = r.State == pathUp
		}
		if !healthy {
			unreachable = append(unreachable, name)
		} else {
			reached = append(reached, name)
		}
	}
	a.reached = reached
	a.cutOff = len(unreachable) > 0 && 2*len(unreachable) >= len(members)
	a.mu.Unlock()
	relays := a.relays.update(members, unreachable, now)
	a.mu.Lock()
	var probe []wgtypes.Key
	for name, kp := range a.peers {
		via := ""
		if kp.Alive {
			via = relays[name]
		}
		if via != kp.RelayVia {
			switch {
			case via == "":
				a.log.Info("relay of peer ends", "peer", name, "was-via", kp.RelayVia, "relayed-for", now.Sub(kp.pathSince).Round(time.Millisecond))
			case kp.RelayVia == "":
				a.log.Info("no direct path; relaying", "peer", name, "via", via)
			default:
				a.log.Info("relay of peer changes", "peer", name, "via", via, "was-via", kp.RelayVia)
			}
			kp.RelayVia = via
			kp.pathSince = now
		}
		if via != "" && now.Sub(kp.probe.probed) >= relayProbe {
			kp.probe.probed = now
			probe = append(probe, kp.PublicKey)
		}
	}
	a.mu.Unlock()

	var errs []error
	if natChanged {
		if err := a.mesh.SetMeta(a.meta()); err != nil {
			errs = append(errs, fmt.Errorf("publish the NAT kind: %w", err))
		}
	}
	// Turning a keepalive on sends one at once: a handshake on the direct
	// path, which tells whether it works again.
	for _, k := range probe {
		for _, ka := range []time.Duration{0, keepalive} {
			ka := ka
			err := a.tun.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &ka}}})
			if err != nil {
				errs = append(errs, fmt.Errorf("probe direct path: %w", err))
				break
			}
		}
	}
	return errors.Join(errs...)
}

// peerKey is the vetted public key of a live member, for the relay
// protocol's MACs.
func (a *agent) peerKey(name string) (wgtypes.Key, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	kp := a.peers[name]
	if kp == nil || !kp.Alive || kp.KeyRefused {
		return wgtypes.Key{}, false
	}
	return kp.PublicKey, true
}

// signalDirect sends a relay signalling message to the probe address of
// the peer to, through the tunnel, when the peer has one and answers
// probes there. Before it answers, it may have no route back to this
// node's probe address yet, and its reverse-path filter would drop the
// message as spoofed.
func (a *agent) signalDirect(to string, msg []byte) {
	if !a.probes.PathUp(to) {
		return
	}
	a.mu.Lock()
	var addr netip.Addr
	if kp := a.peers[to]; kp != nil && kp.Alive && !kp.KeyRefused {
		addr = kp.ProbeAddr
	}
	a.mu.Unlock()
	if !addr.IsValid() {
		return
	}
	if err := a.probes.SendSignal(addr, a.cfg.NodeName, msg); err != nil {
		a.log.Debug("relay message not sent through the tunnel", "peer", to, "err", err)
	}
}

// relayAccepts reports whether this node can forward for the pair (x, y):
// it has a vetted tunnel to both ends.
func (a *agent) relayAccepts(x, y string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range []string{x, y} {
		kp := a.peers[n]
		if kp == nil || !kp.Alive || kp.KeyRefused {
			return false
		}
	}
	return true
}

// judgeNAT updates this node's NAT kind and reflexive endpoint from where
// its peers see it, and reports whether they changed.
func (a *agent) judgeNAT() bool {
	observed := a.probes.Observed()
	var own []netip.AddrPort
	if ap, err := netip.ParseAddrPort(a.endpoint); err == nil {
		own = append(own, ap)
	}
	if a.underlay.Addr.IsValid() {
		own = append(own, netip.AddrPortFrom(a.underlay.Addr, uint16(a.cfg.WGPort)))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	kind, refl := natKind(own, observed, a.natKind)
	if kind == a.natKind && refl == a.reflexive {
		return false
	}
	a.log.Info("NAT judged from where peers see this node", "nat", kind, "reflexive", refl, "was", a.natKind, "observers", len(observed))
	a.natKind, a.reflexive = kind, refl
	return true
}

// syncProbes tells the prober this node's probe address, the peers to
// probe and where WireGuard sees each (for the answers).
func (a *agent) syncProbes(v meshView, devPeers []wgtypes.Peer, self netip.Addr) {
	endpoints := make(map[wgtypes.Key]string, len(devPeers))
	for _, p := range devPeers {
		if p.Endpoint != nil {
			endpoints[p.PublicKey] = p.Endpoint.String()
		}
	}
	targets := map[string]netip.Addr{}
	seen := map[netip.Addr]string{}
	for _, p := range v.Peers {
		if p.ProbeAddr.IsValid() {
			targets[p.Name] = p.ProbeAddr
			seen[p.ProbeAddr] = endpoints[p.PublicKey]
		}
	}
	a.probes.Set(self, targets, seen)
}

// natSync is how often a node behind NAT pushes and pulls the membership
// with a node that is not: well within the time a suspected node has to
// refute (about 4 s).
const natSync = 2 * time.Second

// keepNATMembership keeps a node behind NAT, or one cut off from most of
// its peers, a member. Nodes outside its site (or cut from it) cannot send
// to it, so their gossip probes of it fail (an indirect probe needs a
// helper that reaches it, which few are) and they suspect it; gossip
// telling it so hardly reaches it either. So, while its peers' answers say
// it is behind NAT, it pushes and pulls the membership with a random peer
// not behind NAT every natSync, and while it cannot reach most of its peers
// directly, with a random peer it does reach; it learns of the suspicion
// and refutes it before it is declared dead.
func (a *agent) keepNATMembership(ctx context.Context) error {
	t := time.NewTicker(natSync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		a.mu.Lock()
		natted := a.natKind == natCone || a.natKind == natSymmetric
		var open []string
		if natted {
			for name, kp := range a.peers {
				if kp.Alive && kp.NATKind == natNone {
					open = append(open, name)
				}
			}
		} else if a.cutOff {
			open = slices.Clone(a.reached)
		}
		a.mu.Unlock()
		if len(open) == 0 {
			continue
		}
		peer := open[rand.IntN(len(open))]
		if err := a.mesh.SyncWith(peer); err != nil {
			a.log.Debug("membership sync from behind NAT or a cut failed", "peer", peer, "err", err)
		}
	}
}

// Gossip to members behind NAT goes through the tunnel. Their gossip
// address is private to their site: memberlist's probes from anywhere else
// fail, so without a detour such a node is suspected over and over and
// declared dead whenever its refutation comes late (on a busy node, or
// when its push/pull every natSync is slow). Through the tunnel, punched
// or relayed, the probes are answered as any other. The node listens for
// it at its tunnel address (mesh.ListenDetour), on the gossip port.

// gossipDetour is mesh.Config.Detour: the tunnel address of the peer name
// when it is behind NAT.
func (a *agent) gossipDetour(name string) (netip.Addr, bool) {
	m := a.detours.Load()
	if m == nil {
		return netip.Addr{}, false
	}
	addr, ok := (*m)[name]
	return addr, ok
}

// updateDetours recomputes the detours from the peers' NAT kinds and
// vetted tunnel addresses, and listens at self (this node's tunnel
// address, on the device by now).
func (a *agent) updateDetours(self netip.Addr) error {
	a.mu.Lock()
	m := map[string]netip.Addr{}
	for name, kp := range a.peers {
		if (kp.NATKind == natCone || kp.NATKind == natSymmetric) && kp.TunnelAddr.IsValid() && !kp.KeyRefused {
			m[name] = kp.TunnelAddr
		}
	}
	a.mu.Unlock()
	a.detours.Store(&m)
	if !self.IsValid() {
		return nil
	}
	return a.mesh.ListenDetour(self)
}
