package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/ipalloc"
	"github.com/weftnet/weft/version"
)

// Ready: pods can be given addresses when this node has its tunnel address,
// its tunnel is set up, and it is in the mesh.
func (a *agent) Ready() api.Ready {
	if ok, why := a.alloc.Ready(); !ok {
		return api.Ready{Reason: "address allocator: " + why}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ready {
		return api.Ready{Ready: true}
	}
	reason := a.notReady
	if reason == "" {
		reason = "starting"
	}
	return api.Ready{Reason: reason}
}

func keyOf(at api.Attachment) ipalloc.Key {
	return ipalloc.Key{ContainerID: at.ContainerID, IfName: at.IfName}
}

func (a *agent) allocation(at api.Attachment, addr netip.Addr) api.Allocation {
	al := api.Allocation{
		Attachment: at,
		Address:    netip.PrefixFrom(addr, 32),
		Gateway:    podGateway,
		MTU:        a.mtu,
		PodCIDR:    a.cfg.PodCIDR,
	}
	if addr.Is6() {
		// IPv6 only: the ring's addresses are IPv6.
		return api.Allocation{
			Attachment: at,
			Address6:   netip.PrefixFrom(addr, 128),
			Gateway6:   podGateway6,
			MTU:        a.mtu,
			PodCIDR6:   a.cfg.PodCIDR,
		}
	}
	// Dual stack: the IPv6 address comes with the IPv4 one (one
	// allocation, see ipalloc.Config.PairCIDR).
	if addr6 := a.alloc.Paired(addr); addr6.IsValid() {
		al.Address6 = netip.PrefixFrom(addr6, 128)
		al.Gateway6 = podGateway6
		al.PodCIDR6 = a.cfg.PodCIDR6
	}
	return al
}

// apiError turns an allocator error into what the plugin branches on.
func apiError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ipalloc.ErrFull):
		return &api.Error{Status: http.StatusInsufficientStorage, Code: api.CodeFull, Message: err.Error(),
			Hint: "free addresses by deleting pods, or give the cluster a larger --pod-cidr"}
	case errors.Is(err, ipalloc.ErrNoSpace):
		return &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeNotReady, Message: err.Error(),
			Hint: "this node is waiting for address space from its peers; the runtime retries"}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeNotReady, Message: err.Error()}
	}
	return err
}

func (a *agent) Allocate(ctx context.Context, at api.Attachment) (api.Allocation, error) {
	meta := map[string]string{"netns": at.Netns, "namespace": at.PodNamespace, "pod": at.PodName}
	addr, err := a.alloc.Allocate(ctx, keyOf(at), meta)
	if err != nil {
		return api.Allocation{}, apiError(err)
	}
	return a.allocation(at, addr), nil
}

func (a *agent) Release(ctx context.Context, at api.Attachment) (api.Allocation, bool, error) {
	if a.ownKey(keyOf(at)) {
		return api.Allocation{}, false, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest,
			Message: "that key is this node's own tunnel or probe address"}
	}
	addr, ok, err := a.alloc.Release(ctx, keyOf(at))
	if err != nil || !ok {
		return api.Allocation{Attachment: at}, ok, apiError(err)
	}
	return a.allocation(at, addr), true, nil
}

func (a *agent) Check(_ context.Context, at api.Attachment) (api.Allocation, error) {
	k := keyOf(at)
	for _, al := range a.alloc.List() {
		if al.Key == k {
			return a.allocation(at, al.Addr), nil
		}
	}
	return api.Allocation{}, &api.Error{Status: http.StatusNotFound, Code: api.CodeUnknown,
		Message: fmt.Sprintf("the weft daemon holds no address for container %s interface %s", at.ContainerID, at.IfName)}
}

func (a *agent) GC(ctx context.Context, valid []api.Attachment) ([]api.Allocation, error) {
	keep := []ipalloc.Key{a.nodeKey(), a.probeKey()}
	for _, v := range valid {
		keep = append(keep, keyOf(v))
	}
	freed, err := a.alloc.GC(ctx, keep)
	if err != nil {
		return nil, apiError(err)
	}
	out := make([]api.Allocation, 0, len(freed))
	for _, f := range freed {
		out = append(out, a.allocation(api.Attachment{ContainerID: f.Key.ContainerID, IfName: f.Key.IfName}, f.Addr))
	}
	return out, nil
}

func (a *agent) Rmpeer(ctx context.Context, node string) (string, error) {
	if node == a.cfg.NodeName {
		return "", &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest,
			Message: "rmpeer names this node itself", Hint: "run rmpeer on a live node for a node that is gone"}
	}
	msg, err := a.alloc.Rmpeer(ctx, node)
	if err != nil {
		return "", err
	}
	a.forgetPeer(node)
	return msg, nil
}

// PeerStatus is one row of `weft status peers --json`.
type PeerStatus struct {
	Name       string `json:"name"`
	PublicKey  string `json:"publicKey"`
	Endpoint   string `json:"endpoint,omitempty"`
	Advertised string `json:"advertisedEndpoint,omitempty"`
	TunnelAddr string `json:"tunnelAddress,omitempty"`
	// TunnelAddr6 is the peer's IPv6 tunnel address (dual stack).
	TunnelAddr6 string `json:"tunnelAddress6,omitempty"`
	State       string `json:"state"` // alive, down
	Path        string `json:"path"`  // direct, relayed
	Via         string `json:"via,omitempty"`
	// PathSince is when Path (or Via) last changed, RFC 3339.
	PathSince string `json:"pathSince,omitempty"`
	// DirectPath is the probes' judgement of the direct path (up, down,
	// unknown); empty when the peer is not probed (an older daemon).
	DirectPath string `json:"directPath,omitempty"`
	// RTT is the median round trip of the latest probes of the direct
	// path, in seconds; 0 before the first answer.
	RTT float64 `json:"rttSeconds"`
	// ProbeLoss is the share (0 to 1) of the latest probes (up to 60) of
	// the direct path that were lost.
	ProbeLoss float64 `json:"probeLoss"`
	// NATKind is what the peer tells of its NAT: none, cone, symmetric,
	// or empty while unknown; Reflexive its public endpoint behind a
	// cone NAT.
	NATKind       string   `json:"natKind,omitempty"`
	Reflexive     string   `json:"reflexiveEndpoint,omitempty"`
	LastHandshake string   `json:"lastHandshake,omitempty"`
	HandshakeAge  float64  `json:"handshakeAgeSeconds,omitempty"`
	RxBytes       int64    `json:"rxBytes"`
	TxBytes       int64    `json:"txBytes"`
	AllowedIPs    []string `json:"allowedIPs"`
	// NextPublicKey is the key the peer announces it rotates to (short
	// form, as PublicKey); empty when it is not rotating.
	NextPublicKey string `json:"nextPublicKey,omitempty"`
	// PMTU is the largest packet (IP total length) known to get through
	// the tunnel to the peer, at most the tunnel's MTU; 0 until measured.
	// TCP to and from the peer's ranges is clamped to PMTU - 40.
	PMTU int `json:"pmtu"`
	// Refused says why this node refused what the peer announces (a tunnel
	// address outside the pod range or its own ranges); such an address
	// gets no allowed IP and no route.
	Refused string `json:"refused,omitempty"`
}

// PeersStatus is `weft status peers --json`.
type PeersStatus struct {
	Node       string `json:"node"`
	Version    string `json:"version"`
	PublicKey  string `json:"publicKey"`
	Endpoint   string `json:"endpoint"`
	TunnelAddr string `json:"tunnelAddress,omitempty"`
	// TunnelAddr6 is this node's IPv6 tunnel address (dual stack).
	TunnelAddr6 string `json:"tunnelAddress6,omitempty"`
	Interface   string `json:"interface"`
	WGMode      string `json:"wgMode"`
	MTU         int    `json:"mtu"`
	Ready       bool   `json:"ready"`
	Reason      string `json:"reason,omitempty"`
	Members     int    `json:"members"`
	Health      int    `json:"healthScore"`
	// NATKind is what this node's peers tell of its NAT (none, cone,
	// symmetric; empty while no peer answered its probes); Reflexive its
	// public endpoint behind a cone NAT.
	NATKind   string `json:"natKind,omitempty"`
	Reflexive string `json:"reflexiveEndpoint,omitempty"`
	// LivePeers are the peers alive in the mesh, DirectPeers those of them
	// reached directly, DirectShare the share (1 without live peers).
	LivePeers   int          `json:"livePeers"`
	DirectPeers int          `json:"directPeers"`
	DirectShare float64      `json:"directShare"`
	Peers       []PeerStatus `json:"peers"`
	// KeyRotation is the state of this node's WireGuard key rotation.
	KeyRotation KeyRotationStatus `json:"keyRotation"`
	// Secrets is the cluster secrets held; absent with --insecure.
	Secrets *SecretsStatus `json:"secrets,omitempty"`
}

func (a *agent) Status(section string) (any, error) {
	switch section {
	case "peers":
		return a.peersStatus()
	case "ipam":
		return a.alloc.Status(a.reachable), nil
	case "policy":
		return a.policyStatus()
	case "":
		p, err := a.peersStatus()
		if err != nil {
			return nil, err
		}
		return map[string]any{"peers": p, "ipam": a.alloc.Status(a.reachable)}, nil
	}
	return nil, &api.Error{Status: http.StatusNotFound, Code: api.CodeBadRequest, Message: "no status section " + section}
}

func (a *agent) reachable(node string) bool {
	if node == a.cfg.NodeName {
		return true
	}
	for _, m := range a.mesh.Members() {
		if m.Name == node {
			return true
		}
	}
	return false
}

func (a *agent) peersStatus() (PeersStatus, error) {
	dev, err := a.tun.Device()
	if err != nil {
		return PeersStatus{}, fmt.Errorf("read tunnel device: %w", err)
	}
	h := a.mesh.Health()
	r := a.Ready()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := PeersStatus{
		Node: a.cfg.NodeName, Version: version.Version, PublicKey: a.key.PublicKey().String(),
		Endpoint: a.endpoint, Interface: a.tun.Name(), WGMode: a.tun.Mode(), MTU: a.mtu,
		Ready: r.Ready, Reason: r.Reason, Members: h.Members, Health: h.Score,
	}
	if a.tunnelAddr.IsValid() {
		st.TunnelAddr = a.tunnelAddr.String()
	}
	if a.tunnelAddr6.IsValid() {
		st.TunnelAddr6 = a.tunnelAddr6.String()
	}
	st.KeyRotation = a.keyRotationStatus()
	st.Secrets = a.secretsStatus()
	st.NATKind = a.natKind
	if a.reflexive.IsValid() {
		st.Reflexive = a.reflexive.String()
	}
	probes := a.probes.Results()
	byKey := map[string]*knownPeer{}
	for _, kp := range a.peers {
		byKey[kp.PublicKey.String()] = kp
	}
	now := time.Now()
	pmtu := a.pmtu.Results()
	for _, p := range dev.Peers {
		ps := PeerStatus{PublicKey: shortKey(p.PublicKey.String()), Path: "direct", State: "unknown",
			RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes, AllowedIPs: []string{}}
		if kp := byKey[p.PublicKey.String()]; kp != nil {
			ps.Name = kp.Name
			ps.PMTU = pmtu[kp.Name]
			ps.Advertised = kp.Endpoint
			if kp.Announced.IsValid() {
				ps.TunnelAddr = kp.Announced.String()
			}
			if kp.Announced6.IsValid() {
				ps.TunnelAddr6 = kp.Announced6.String()
			}
			ps.Refused = kp.Refused
			if kp.NextKey != (wgtypes.Key{}) {
				ps.NextPublicKey = shortKey(kp.NextKey.String())
			}
			ps.State = "down"
			if kp.Alive {
				ps.State = "alive"
			}
			if kp.RelayVia != "" {
				ps.Path, ps.Via = "relayed", kp.RelayVia
			}
			if !kp.pathSince.IsZero() {
				ps.PathSince = kp.pathSince.UTC().Format(time.RFC3339Nano)
			}
			if r, ok := probes[kp.Name]; ok && kp.ProbeAddr.IsValid() {
				ps.DirectPath, ps.RTT, ps.ProbeLoss = r.State.String(), r.RTT.Seconds(), r.Loss
			}
			ps.NATKind = kp.NATKind
			if kp.Reflexive.IsValid() {
				ps.Reflexive = kp.Reflexive.String()
			}
			if kp.Alive {
				st.LivePeers++
				if ps.Path == "direct" {
					st.DirectPeers++
				}
			}
		}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.String()
		}
		if !p.LastHandshakeTime.IsZero() {
			ps.LastHandshake = p.LastHandshakeTime.UTC().Format(time.RFC3339)
			ps.HandshakeAge = now.Sub(p.LastHandshakeTime).Seconds()
		}
		for _, n := range ipNetsToPrefixes(p.AllowedIPs) {
			ps.AllowedIPs = append(ps.AllowedIPs, n.String())
		}
		st.Peers = append(st.Peers, ps)
	}
	// Peers refused as a whole have no tunnel; list them all the same.
	for _, kp := range a.peers {
		if kp.KeyRefused {
			ps := PeerStatus{Name: kp.Name, PublicKey: shortKey(kp.PublicKey.String()), Advertised: kp.Endpoint,
				State: "down", Path: "none", AllowedIPs: []string{}, Refused: kp.Refused}
			if kp.Alive {
				ps.State = "alive"
			}
			if kp.Announced.IsValid() {
				ps.TunnelAddr = kp.Announced.String()
			}
			st.Peers = append(st.Peers, ps)
		}
	}
	st.DirectShare = 1
	if st.LivePeers > 0 {
		st.DirectShare = float64(st.DirectPeers) / float64(st.LivePeers)
	}
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].Name < st.Peers[j].Name })
	return st, nil
}

// Allocator messages on the mesh carry a one-byte tag: a ring delta sent to
// everyone, or a message of the donation protocol sent to one peer (signed,
// directmsg.go).
const (
	tagRingDelta byte = 'R'
	tagAllocMsg  byte = 'm'
)

// Tags of the direct messages of a weft from before they were signed
// ('M' for the allocator, 'A' and 'S' for key rotation): refused with
// advice to upgrade that node.
const (
	tagUnsignedAllocMsg    byte = 'M'
	tagUnsignedKeyAck      byte = 'A'
	tagUnsignedKeySwitched byte = 'S'
)

// allocDelegate hands the allocator's ring to the gossip.
type allocDelegate struct {
	alloc  *ipalloc.Allocator
	relays *relaySignaller // relay signalling rides on the same messages
	log    *slog.Logger
	// key takes the key rotation messages (tagKeyAck, tagKeySwitched).
	key func(from string, tag byte, payload []byte) error
	// open checks the MAC of a direct message (tag, body, MAC) from the
	// member from and returns its body (directmsg.go).
	open func(from string, msg []byte) ([]byte, error)
	// refusals paces the log of refused direct messages.
	refusals *refusalLog
}

// refusalLog logs refused messages once a minute per peer, with how many
// were refused meanwhile, so a peer that speaks garbage cannot flood the
// log.
type refusalLog struct {
	mu    sync.Mutex
	peers map[string]*refusalCount
}

type refusalCount struct {
	last time.Time
	n    int
}

func (r *refusalLog) log(log *slog.Logger, peer string, err error) {
	r.mu.Lock()
	if r.peers == nil || len(r.peers) > 4096 {
		r.peers = map[string]*refusalCount{}
	}
	c := r.peers[peer]
	if c == nil {
		c = &refusalCount{}
		r.peers[peer] = c
	}
	c.n++
	now := time.Now()
	due := now.Sub(c.last) >= time.Minute
	n := c.n
	if due {
		c.last, c.n = now, 0
	}
	r.mu.Unlock()
	if due {
		log.Warn("direct message refused", "peer", peer, "err", err, "refused-since-last-report", n)
	}
}

func (d allocDelegate) LocalState() []byte { return d.alloc.LocalState() }

func (d allocDelegate) MergeRemoteState(data []byte) {
	if err := d.alloc.MergeRemote(data); err != nil {
		d.log.Warn("ring from gossip refused", "err", err)
	}
}

func (d allocDelegate) NotifyMsg(from string, msg []byte) {
	if len(msg) == 0 {
		return
	}
	var err error
	switch msg[0] {
	case tagAllocMsg, tagKeyAck, tagKeySwitched:
		// Direct messages: the sender's name is proven by the MAC.
		var body []byte
		if body, err = d.open(from, msg); err != nil {
			d.refusals.log(d.log, from, err)
			return
		}
		if msg[0] == tagAllocMsg {
			err = d.alloc.HandleMessage(from, body)
		} else if d.key != nil {
			err = d.key(from, msg[0], body)
		}
	case tagUnsignedAllocMsg, tagUnsignedKeyAck, tagUnsignedKeySwitched:
		d.refusals.log(d.log, from, errors.New("an unsigned direct message, from a weft older than this one: upgrade that node"))
		return
	case tagRingDelta:
		err = d.alloc.MergeRemote(msg[1:])
	case tagRelaySignal:
		d.relays.receive(from, msg[1:])
	default:
		err = fmt.Errorf("unknown message tag %#x", msg[0])
	}
	if err != nil {
		d.log.Warn("allocator message refused", "peer", from, "err", err)
	}
}
