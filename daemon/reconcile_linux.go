package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/mesh"
)

// reconcileLoop makes the kernel match the mesh on every membership or ring
// change and on a periodic resync, so a missed event heals itself.
func (a *agent) reconcileLoop(ctx context.Context) error {
	mem := endpointMemory{}
	tick := time.NewTicker(a.cfg.ResyncInterval)
	defer tick.Stop()
	// A short timer judges the direct paths, catches reaps and retries a
	// failed pass soon.
	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	failed := false
	events := a.mesh.Events()
	for {
		if err := a.reconcile(mem); err != nil {
			if !failed {
				a.log.Warn("reconcile failed; retrying", "err", err)
			}
			failed = true
			a.mu.Lock()
			a.lastErr = err.Error()
			a.mu.Unlock()
		} else {
			if failed {
				a.log.Info("reconcile recovered")
			}
			failed = false
			a.mu.Lock()
			a.lastErr = ""
			a.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil // the mesh stopped; ctx ends next
				continue
			}
			a.log.Debug("mesh event", "type", ev.Type, "peer", ev.Peer.Name)
		case <-a.alloc.Changes():
		case <-a.kick:
		case <-tick.C:
		case <-retry.C:
		}
	}
}

// refreshPeers folds the mesh's members and the ring's owners into the
// known peers: members are alive; a peer that left is kept (with its tunnel)
// until ReapTime has passed, so a short outage does not churn the mesh.
func (a *agent) refreshPeers(now time.Time) {
	members := a.mesh.Members()
	ranges := a.alloc.Ranges()
	if a.cfg.PodCIDR6.IsValid() {
		for o, ps := range ranges {
			ranges[o] = append(ps, a.alloc.PairedPrefixes(ps)...)
		}
	}
	a.rememberMembers(members)
	a.bridge.setRefused(a.foldPeers(members, ranges, now))
}

// foldPeers is refreshPeers without the mesh and the allocator: it folds
// members and the ring's ranges (by owner) into a.peers and returns the
// peers refused for their key. Its cost is linear in the members
// (BenchmarkPeerReconcile).
func (a *agent) foldPeers(members []mesh.Peer, ranges map[string][]netip.Prefix, now time.Time) map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := make(map[string]bool, len(members))
	for _, m := range members {
		seen[m.Name] = true
		kp := a.peers[m.Name]
		if kp == nil {
			kp = &knownPeer{}
			a.peers[m.Name] = kp
		}
		kp.Name = m.Name
		kp.NextKey = wgtypes.Key(m.Meta.NextPublicKey)
		kp.Secrets = m.Meta.SecretFingerprints()
		var keep bool
		kp.PublicKey, keep = peerKey(wgtypes.Key(m.Meta.PublicKey), kp.NextKey, a.switched[m.Name])
		if !keep {
			delete(a.switched, m.Name)
		}
		kp.Announced = m.Meta.TunnelAddr
		kp.Announced6 = m.Meta.TunnelAddr6
		kp.ProbeAnnounced = m.Meta.ProbeAddr
		kp.Endpoint = m.Meta.Endpoint
		kp.NATKind = m.Meta.NATKind
		kp.Reflexive = netip.AddrPort{}
		if m.Meta.NATKind == natCone {
			kp.Reflexive, _ = netip.ParseAddrPort(m.Meta.Reflexive)
		}
		kp.peer.Endpoint = resolveEndpoint(peerEndpoint(m.Meta.Endpoint, kp.Reflexive, a.reflexive))
		if kp.pathSince.IsZero() {
			kp.pathSince = now
		}
		kp.Alive = true
		kp.LastSeen = now
	}
	for name, kp := range a.peers {
		if !seen[name] {
			kp.Alive = false
			if now.Sub(kp.LastSeen) > a.cfg.ReapTime {
				a.log.Info("peer reaped: its tunnel is removed", "peer", name, "down-for", now.Sub(kp.LastSeen).Round(time.Second))
				delete(a.peers, name)
			}
		}
	}
	refused := map[string]bool{}
	for _, kp := range a.peers {
		kp.Ranges = ranges[kp.Name]
		a.vetPeer(kp, ranges, now)
		if kp.KeyRefused {
			refused[kp.Name] = true
		}
	}
	return refused
}

// refusalGrace is how long a refused tunnel address may stay refused before
// it is logged: a new node announces its address about when the donation
// that gave it arrives, so for a moment the ring may still name the donor.
const refusalGrace = 5 * time.Second

// checkPin holds the keys a member announces against its Node, with
// Kubernetes: the key the Node carries, or the one it announces as next
// while its node rotates (weft.dev/next-public-key). why says why the
// member's key is refused ("" when it is not); nextRefused is set when its
// announced next key is not the Node's. Without Kubernetes nothing is
// pinned.
func (a *agent) checkPin(name string, cur, next wgtypes.Key) (why string, nextRefused bool) {
	if a.nodes == nil {
		return "", false
	}
	pinned, ok := a.nodes.PublicKey(name)
	if !ok {
		return "", false
	}
	pinNext, _ := a.nodes.NextPublicKey(name)
	if !pinAccepts(pinned, pinNext, cur) {
		why = fmt.Sprintf("announces public key %s, but its Node carries %s", shortKey(cur.String()), shortKey(pinned))
	}
	return why, next != (wgtypes.Key{}) && !pinAccepts(pinned, pinNext, next)
}

// vetPeer accepts of what a peer announces only what it may claim. With
// Kubernetes, its public key must be the one its Node carries (when the
// Node has one): otherwise the peer gets no tunnel at all. Its tunnel
// address must lie in the pod range and in the peer's own ranges:
// otherwise it gets no allowed IP and no route. Status shows why, and a
// refusal is logged once it has lasted refusalGrace (a node that changed
// its key republishes it on its Node within seconds). Callers hold a.mu.
func (a *agent) vetPeer(kp *knownPeer, ranges map[string][]netip.Prefix, now time.Time) {
	why, nextRefused := a.checkPin(kp.Name, kp.PublicKey, kp.NextKey)
	kp.KeyRefused, kp.NextRefused = why != "", nextRefused
	if _, ok := a.presharedKey(kp.Secrets); !ok && why == "" {
		why = "holds none of this node's cluster secrets (the secret overlap ended before it got the new one)"
		kp.KeyRefused = true
	}
	if why == "" {
		why = checkTunnelAddr(kp.Name, kp.Announced, a.cfg.PodCIDR, ranges)
	}
	if why == "" {
		// Per family: the IPv6 address in the IPv6 range and in the
		// peer's IPv6 ranges (ranges holds both families).
		why = checkTunnelAddr(kp.Name, kp.Announced6, a.cfg.PodCIDR6, ranges)
	}
	// A probe address the ring does not give the peer is ignored: its
	// direct path is then judged by WireGuard's counters.
	kp.ProbeAddr = netip.Addr{}
	if !kp.KeyRefused && checkTunnelAddr(kp.Name, kp.ProbeAnnounced, a.cfg.PodCIDR, ranges) == "" {
		kp.ProbeAddr = kp.ProbeAnnounced
	}
	if why == "" {
		if kp.Refused != "" && kp.refusalLogged {
			a.log.Info("peer accepted now", "peer", kp.Name, "addr", kp.Announced)
		}
		kp.TunnelAddr, kp.TunnelAddr6, kp.Refused, kp.refusalLogged = kp.Announced, kp.Announced6, "", false
		return
	}
	kp.TunnelAddr, kp.TunnelAddr6 = netip.Addr{}, netip.Addr{}
	if why != kp.Refused {
		kp.Refused, kp.refusedSince, kp.refusalLogged = why, now, false
	}
	if !kp.refusalLogged && now.Sub(kp.refusedSince) >= refusalGrace {
		if kp.KeyRefused {
			a.log.Warn("refusing a peer whose key is not its Node's: no tunnel to it", "peer", kp.Name, "reason", why)
		} else {
			a.log.Warn("refusing a peer's tunnel address: no allowed IP and no route for it", "peer", kp.Name, "reason", why)
		}
		kp.refusalLogged = true
	}
}

// shortKey is the start of a base64 key, as status shows keys.
func shortKey(k string) string {
	if len(k) > 10 {
		return k[:10] + "…"
	}
	return k
}

// forgetPeer drops a peer at once (rmpeer, Node deletion).
func (a *agent) forgetPeer(name string) {
	a.mu.Lock()
	delete(a.peers, name)
	a.mu.Unlock()
	a.trigger()
}

func resolveEndpoint(s string) *net.UDPAddr {
	if s == "" {
		return nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return net.UDPAddrFromAddrPort(ap)
	}
	u, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		return nil
	}
	return u
}

// view is the desired tunnel state from the known peers.
func (a *agent) view() (meshView, netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v := meshView{Keepalive: keepalive}
	for _, kp := range a.peers {
		if kp.KeyRefused {
			continue
		}
		p := kp.peer
		p.PSK, _ = a.presharedKey(kp.Secrets)
		v.Peers = append(v.Peers, p)
	}
	return v, a.tunnelAddr
}

// reconcile is one pass: tunnel link, peers, routes, masquerade.
func (a *agent) reconcile(mem endpointMemory) error {
	now := time.Now()
	a.refreshPeers(now)
	a.syncSecrets(now)
	a.sendKeyAcks(now)
	a.advanceKeyRotation(now)
	a.rememberPeers()
	_, self := a.view()
	a.mu.Lock()
	probeAddr, self6 := a.probeAddr, a.tunnelAddr6
	a.mu.Unlock()
	var errs []error
	link, err := a.nl.LinkByName(a.tun.Name())
	if err != nil {
		return fmt.Errorf("tunnel device %s is gone: %w", a.tun.Name(), err)
	}
	if err := a.ensureLink(link, self, probeAddr, self6); err != nil {
		errs = append(errs, err)
	}
	dev, err := a.tun.Device()
	if err != nil {
		return fmt.Errorf("read tunnel device: %w", err)
	}
	if err := a.judgePaths(dev.Peers, time.Now()); err != nil {
		errs = append(errs, err)
	}
	if err := a.updateDetours(self); err != nil {
		errs = append(errs, err)
	}
	// The view after judging the paths (relays may have changed); the
	// tunnel address stays the one the link was set up with in this pass.
	v, _ := a.view()
	if dev.PrivateKey != a.key || dev.ListenPort != a.cfg.WGPort {
		if err := a.tun.Configure(wgtypes.Config{PrivateKey: &a.key, ListenPort: &a.cfg.WGPort}); err != nil {
			errs = append(errs, fmt.Errorf("set tunnel key and port: %w", err))
		}
	}
	// Routes before peers: a packet WireGuard takes from a new peer must
	// find a route back to its source, or the reverse-path filter drops it
	// as spoofed.
	if self.IsValid() {
		want := desiredRoutesFamilies(a.cfg.PodCIDRs(), []netip.Addr{self, self6}, v.allowedIPs())
		if err := syncRoutes(a.nl, link.Attrs().Index, want); err != nil {
			errs = append(errs, err)
		}
	}
	// And no peers before this node has its tunnel address: without it
	// there are no routes, so the same holds. Unless the device still
	// carries the routes of the daemon before (reattached after a kill -9):
	// then the peers restored from the state directory go back at once,
	// and traffic resumes before the address is claimed again.
	peersOK := self.IsValid()
	if !peersOK {
		if peersOK, err = hasRoutes(a.nl, link.Attrs().Index); err != nil {
			errs = append(errs, err)
		}
	}
	if cfgs := diffPeers(dev.Peers, v, mem); len(cfgs) > 0 && peersOK {
		if err := a.tun.Configure(wgtypes.Config{Peers: cfgs}); err != nil {
			errs = append(errs, fmt.Errorf("configure tunnel peers: %w", err))
		} else {
			mem.remember(cfgs)
			a.log.Debug("tunnel peers changed", "changes", len(cfgs))
		}
	}
	if err := syncMasquerade(a.cfg.PodCIDRs()...); err != nil {
		errs = append(errs, err)
	}
	if err := a.syncPathMTU(v, dev.Peers); err != nil {
		errs = append(errs, err)
	}
	a.syncProbes(v, dev.Peers, probeAddr)
	err = errors.Join(errs...)
	a.mu.Lock()
	switch {
	case !self.IsValid():
		a.ready = false
		if a.notReady == "" {
			a.notReady = "waiting for a tunnel address from the allocator"
		}
	case err != nil:
		a.ready = false
		a.notReady = "tunnel not set up: " + err.Error()
	default:
		a.ready = true
		a.notReady = ""
	}
	a.mu.Unlock()
	return err
}

// ensureLink keeps the tunnel device up with its MTU and this node's
// overlay address and probe address, and its IPv6 overlay address in a
// dual-stack cluster.
func (a *agent) ensureLink(link netlink.Link, self, probe, self6 netip.Addr) error {
	if link.Attrs().MTU != a.mtu {
		if err := a.nl.LinkSetMTU(link, a.mtu); err != nil {
			return fmt.Errorf("set MTU of %s: %w", link.Attrs().Name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := a.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("bring %s up: %w", link.Attrs().Name, err)
		}
	}
	if !self.IsValid() {
		return nil
	}
	family := netlink.FAMILY_V4
	if self6.IsValid() || self.Is6() {
		family = netlink.FAMILY_ALL
	}
	addrs, err := a.nl.AddrList(link, family)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	want := map[string]*net.IPNet{}
	for _, ad := range []netip.Addr{self, probe, self6} {
		if ad.IsValid() {
			n := &net.IPNet{IP: ad.AsSlice(), Mask: net.CIDRMask(ad.BitLen(), ad.BitLen())}
			want[n.String()] = n
		}
	}
	found := map[string]bool{}
	for _, ad := range addrs {
		if ad.IP.To4() == nil && ad.IP.IsLinkLocalUnicast() {
			continue // the kernel's own IPv6 link-local address
		}
		if want[ad.IPNet.String()] != nil {
			found[ad.IPNet.String()] = true
			continue
		}
		// An address of an earlier life (a reclaimed range) must go.
		if err := a.nl.AddrDel(link, &ad); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", ad.IPNet, link.Attrs().Name, err)
		}
	}
	for s, n := range want {
		if found[s] {
			continue
		}
		// No duplicate address detection: the address is this node's
		// alone (the ring says so), and a tentative one could not be used.
		na := &netlink.Addr{IPNet: n}
		if n.IP.To4() == nil {
			na.Flags = unix.IFA_F_NODAD
		}
		if err := a.nl.AddrAdd(link, na); err != nil {
			return fmt.Errorf("add %s to %s: %w", n, link.Attrs().Name, err)
		}
	}
	return nil
}

// meshBridge carries the allocator's messages over the mesh. The mesh is
// set once, before anything runs.
type meshBridge struct {
	m *mesh.Mesh
	// seal signs a direct message to a member (agent.sealDirect).
	seal func(to string, tag byte, body []byte) ([]byte, error)

	mu      sync.Mutex
	refused map[string]bool // members refused as a whole (vetPeer): not live peers of the allocator
}

// setRefused replaces the set of members refused as a whole.
func (b *meshBridge) setRefused(names map[string]bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refused = names
}

func (b *meshBridge) Send(_ context.Context, peer string, msg []byte) error {
	sealed, err := b.seal(peer, tagAllocMsg, msg)
	if err != nil {
		return fmt.Errorf("send to %s: %w", peer, err)
	}
	return b.m.SendTo(peer, sealed)
}

func (b *meshBridge) broadcast(delta []byte) { b.m.Broadcast(append([]byte{tagRingDelta}, delta...)) }

func (b *meshBridge) liveNames() []string {
	if b.m == nil {
		return nil
	}
	ms := b.m.Members()
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		// A refused member never takes part in the ring: waiting for it
		// (a reclaim's confirmation) would wait forever.
		if !b.refused[m.Name] {
			out = append(out, m.Name)
		}
	}
	return out
}
