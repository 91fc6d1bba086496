package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sync/errgroup"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weftnet/weft/cniplugin/install"
	"github.com/weftnet/weft/crypto"
	"github.com/weftnet/weft/daemon/handoff"
	"github.com/weftnet/weft/ipalloc"
	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/mesh"
	"github.com/weftnet/weft/policy"
)

// podGateway is the link-local next hop every pod routes through; the host
// end of the pod's veth answers ARP for it (proxy ARP).
var podGateway = netip.MustParseAddr("169.254.1.1")

// podGateway6 is the IPv6 next hop of a pod (dual stack or IPv6 only): a
// link-local address, for which the plugin gives the pod a permanent
// neighbour entry to the host end's MAC.
var podGateway6 = netip.MustParseAddr("fe80::1")

// agent is one running daemon. The reconcile loop owns the tunnel, routes
// and rules; the fields under mu are what status and the API read.
type agent struct {
	cfg      Config
	log      *slog.Logger
	secret   crypto.Secret
	underlay underlay
	endpoint string
	mtu      int
	key      wgtypes.Key
	tun      *crypto.Tunnel
	mesh     *mesh.Mesh
	alloc    *ipalloc.Allocator
	bridge   *meshBridge // the allocator's way to the mesh
	nl       *netlink.Handle
	kick     chan struct{}
	pmtu     *pmtuProber // path MTU of every peer
	probes   *pathProber // liveness of every direct path
	relays   *relaySignaller
	direct   directKeys // MAC keys of direct messages (directmsg.go)
	metrics  *metrics
	// detours are the tunnel addresses of the peers behind NAT, where
	// gossip to them goes (gossipDetour); read by memberlist's goroutines
	// without a lock, so replaced whole by each reconcile pass.
	detours atomic.Pointer[map[string]netip.Addr]
	// healthAddrs are where /metrics, /healthz and /readyz are served.
	healthAddrs []string
	out         chan outMsg // direct messages to peers, sent by sendLoop

	// The handoff socket: successors that ask for the data path arrive on
	// successors (one at most is kept); successor is the one Run chose.
	handoffLn  *handoff.Listener
	handoffWG  sync.WaitGroup // the accept loop
	successors chan *handoff.Successor
	successor  *handoff.Successor

	mu          sync.Mutex
	tunnelAddr  netip.Addr
	tunnelAddr6 netip.Addr     // the IPv6 address paired with tunnelAddr (dual stack); invalid otherwise
	probeAddr   netip.Addr     // where peers probe this node's direct paths
	natKind     string         // what peers' answers tell of this node's NAT
	reflexive   netip.AddrPort // this node's public endpoint behind a cone NAT
	reached     []string       // live peers whose direct path works
	cutOff      bool           // most live peers cannot be reached directly
	ready       bool
	notReady    string
	lastErr     string
	peers       map[string]*knownPeer // by name; owned by the reconcile loop, read under mu
	rot         keyRotation           // this node's key rotation
	secrets     secretSet             // the cluster secrets held, newest first
	// announcedSecrets is what gossip last got of secrets.
	announcedSecrets string
	switched         map[string]wgtypes.Key // peers that told of their key switch before gossip did
	acked            map[string]ackRecord   // the last ack of each peer's next key

	savedMembers []string    // gossip addresses last written to known-peers.json; reconcile loop only
	keyringState string      // the gossip keys last set; reconcile loop only
	savedPeers   []savedPeer // what peers.json last got; reconcile loop only

	kube           kubernetes.Interface // nil without Kubernetes
	kubeREST       *rest.Config         // its config, for the ClusterNetworkPolicy client
	nodes          *kube.Nodes
	applier        *policy.Applier // nil without Kubernetes
	drops          *policy.DropLog
	ruleSet        policy.RuleSet
	clusterWatched bool              // ClusterNetworkPolicies are watched (their CRD is served)
	explainer      *policy.Explainer // the objects and rules in force; nil until the first apply
	policyApplied  time.Time
}

// knownPeer is a member as the reconcile loop last saw it, kept for ReapTime
// after it stopped answering.
type knownPeer struct {
	peer
	Alive    bool
	LastSeen time.Time
	Endpoint string
	probe    pathProbe
	// ProbeAnnounced is the probe address the peer gossips (peer.ProbeAddr
	// once vetted); NATKind and Reflexive what it tells of its NAT.
	ProbeAnnounced netip.Addr
	NATKind        string
	Reflexive      netip.AddrPort
	pathSince      time.Time // when the path (direct or relayed via whom) last changed
	// Announced is the tunnel address the peer gossips; peer.TunnelAddr
	// holds it only once vetPeer accepted it. Refused says why not;
	// KeyRefused: the whole peer is refused (its key is not its Node's).
	Announced  netip.Addr
	Announced6 netip.Addr // the IPv6 tunnel address it gossips (dual stack)
	Refused    string
	KeyRefused bool
	// Secrets are the fingerprints of the cluster secrets the peer holds.
	Secrets []string
	// NextKey is the key the peer announces it rotates to; NextRefused:
	// its Node does not carry it (no ack, no switch to it).
	NextKey       wgtypes.Key
	NextRefused   bool
	refusedSince  time.Time
	refusalLogged bool
}

// Run runs the node agent until ctx is done.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	a := &agent{cfg: cfg, log: log, kick: make(chan struct{}, 1), peers: map[string]*knownPeer{}, metrics: newMetrics(),
		successors: make(chan *handoff.Successor, 1), switched: map[string]wgtypes.Key{}, acked: map[string]ackRecord{},
		out: make(chan outMsg, 256)}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	if err := a.setup(gctx, g); err != nil {
		cancel()
		_ = g.Wait()
		a.teardown()
		return err
	}
	// Only now: a successor must find the socket of a daemon that is
	// running, never this one's while it takes over itself.
	a.listenHandoff()
	g.Go(func() error {
		select {
		case <-gctx.Done():
			return nil
		case s := <-a.successors:
			a.log.Info("a new daemon asks for the data path; stopping to hand it over", "pid", s.PID)
			a.successor = s
			return errHandingOver
		}
	})
	g.Go(func() error { return a.mesh.Run(gctx) })
	g.Go(func() error { return a.alloc.Run(gctx) })
	g.Go(func() error {
		return (&apiServer{socket: cfg.SocketPath(), b: a, log: log, metrics: a.metrics}).Run(gctx)
	})
	if cfg.MetricsAddr != "" {
		g.Go(func() error { return a.serveHealth(gctx) })
	}
	g.Go(func() error { return a.claimTunnelAddr(gctx) })
	g.Go(func() error { return a.sweepLoop(gctx) })
	g.Go(func() error { return a.reconcileLoop(gctx) })
	g.Go(func() error { return a.pmtu.Run(gctx) })
	g.Go(func() error { return a.probes.Run(gctx) })
	g.Go(func() error { return a.relays.Run(gctx) })
	g.Go(func() error { return a.keepNATMembership(gctx) })
	g.Go(func() error { return a.sendLoop(gctx) })
	switch {
	case cfg.SecretFile != "":
		g.Go(func() error { return a.watchSecretFile(gctx) })
	case a.kube != nil && !a.secrets.empty():
		g.Go(func() error { return a.watchKubeSecret(gctx) })
	}
	if cfg.KeyRotation > 0 {
		g.Go(func() error { return a.autoRotateKeys(gctx) })
	}
	if a.kube != nil {
		a.runKube(gctx, g)
	}
	g.Go(func() error {
		select {
		case <-gctx.Done():
			return nil
		case <-a.tun.Done():
			return fmt.Errorf("the tunnel device %s was deleted under the daemon: restart it to recreate the device", a.tun.Name())
		}
	})
	err := g.Wait()
	if errors.Is(err, errHandingOver) || errors.Is(err, context.Canceled) {
		err = nil
	}
	if a.successor == nil {
		a.successor = a.awaitSuccessor(err == nil && parent.Err() != nil)
	}
	if a.teardown() {
		return ErrHandedOver
	}
	return err
}

func (a *agent) setup(ctx context.Context, g *errgroup.Group) error {
	cfg := a.cfg
	kubeSeeds, kubeGenesis, err := a.setupKube(ctx, g)
	if err != nil {
		return err
	}
	switch {
	case cfg.SecretFile != "":
		s, err := crypto.ReadSecret(cfg.SecretFile)
		if err != nil {
			return err
		}
		a.secret = s
	case a.kube != nil && !cfg.Insecure:
		s, err := kube.EnsureSecret(ctx, a.kube, kube.Namespace)
		if err != nil {
			return fmt.Errorf("the cluster secret from Kubernetes: %w", err)
		}
		a.secret = s
		a.log.Info("using the cluster secret from the Kubernetes Secret", "secret", kube.Namespace+"/weft")
	case cfg.Insecure:
		a.log.Warn("RUNNING INSECURE: no cluster secret, gossip is in clear and tunnels have no preshared key; " +
			"any host that reaches the gossip port can join. Give every node --secret-file.")
	default:
		return ErrNoSecret
	}
	a.secrets = newSecretSet(a.secret, time.Now())
	a.announcedSecrets = a.secrets.fingerprints()
	u, err := findUnderlay(cfg.Listen)
	if err != nil {
		return err
	}
	a.underlay = u
	if cfg.MetricsAddr != "" {
		if a.healthAddrs, err = healthAddrs(cfg.MetricsAddr, u.Addr); err != nil {
			return err
		}
	}
	a.endpoint = cfg.AdvertiseEndpoint
	if a.endpoint == "" {
		a.endpoint = net.JoinHostPort(u.Addr.String(), strconv.Itoa(cfg.WGPort))
	}
	a.mtu = cfg.MTU
	if a.mtu == 0 {
		a.mtu = crypto.AutoMTU(u.MTU)
	}
	a.pmtu = newPMTUProber(defaultPMTUConfig(a.mtu), a.log.With("part", "pmtu"), a.trigger)
	a.probes = newPathProber(defaultLivenessConfig().scaled(a.cfg.ProbeInterval), a.log.With("part", "probe"), a.trigger)
	for _, s := range nodeSysctls {
		if err := setSysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	if cfg.hasIPv6() {
		for _, s := range nodeSysctls6 {
			if err := setSysctl(s[0], s[1]); err != nil {
				return err
			}
		}
	}
	if a.key, err = crypto.LoadOrCreatePrivateKey(cfg.StateDir, a.log); err != nil {
		return err
	}
	if err := a.resumeKeyRotation(); err != nil {
		return err
	}
	if a.nl, err = netlink.NewHandle(); err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	// A daemon still running here hands its live tunnel over: it stops its
	// gossip, API and state first, so that this one can open its own.
	if err := a.openTunnel(ctx, a.takeOver(ctx)); err != nil {
		return err
	}
	if err := setLooseRPFilter(a.tun.Name(), a.log); err != nil {
		return err
	}
	if cfg.hasIPv6() {
		// A host whose new interfaces start without IPv6
		// (net.ipv6.conf.default.disable_ipv6=1) still carries the pods'
		// IPv6 traffic on the tunnel device.
		if err := setSysctlPath("net/ipv6/conf/"+a.tun.Name()+"/disable_ipv6", "0"); err != nil {
			return fmt.Errorf("enable IPv6 on %s for the IPv6 pod range: %w", a.tun.Name(), err)
		}
	}
	seed, err := parseIPAllocInit(cfg.IPAllocInit)
	if err != nil {
		return err
	}
	if seed == nil && kubeGenesis != nil {
		seed = kubeGenesis
	}
	bridge := &meshBridge{seal: a.sealDirect}
	a.bridge = bridge
	a.alloc, err = ipalloc.New(ipalloc.Config{
		Self:      cfg.NodeName,
		CIDR:      cfg.PodCIDR,
		PairCIDR:  cfg.PodCIDR6,
		Seed:      seed,
		StateDir:  cfg.StateDir,
		Transport: bridge,
		Peers:     bridge.liveNames,
		Broadcast: bridge.broadcast,
		Logger:    a.log.With("part", "ipalloc"),
	})
	if err != nil {
		return err
	}
	mcfg := mesh.DefaultConfig()
	if cfg.ProbeInterval > 0 {
		mcfg.ProbeInterval = cfg.ProbeInterval
		mcfg.ProbeTimeout = cfg.ProbeInterval / 2
	}
	mcfg.NodeName = cfg.NodeName
	mcfg.BindAddr = u.Addr.String()
	mcfg.BindPort = cfg.GossipPort
	if a.secret != nil {
		mcfg.Key = a.secret.GossipKey()
	}
	// Seeds, then the members this node knew before a restart: they are
	// tried too, so a restarted first node finds the others at once.
	mcfg.Seeds = append(slices.Clone(cfg.Peers), kubeSeeds...)
	mcfg.Seeds = append(mcfg.Seeds, loadKnownPeers(cfg.StateDir)...)
	mcfg.Meta = a.meta()
	mcfg.Logger = a.log.With("part", "mesh")
	a.relays = newRelaySignaller(relaySignallerConfig{
		Self: cfg.NodeName, Private: a.key, PublicKey: a.peerKey, Accept: a.relayAccepts, OnChange: a.trigger,
		Broadcast: func(b []byte) { a.mesh.Broadcast(b) }, Direct: a.signalDirect, Log: a.log.With("part", "relay"),
	})
	a.probes.onSignal = a.relays.receive
	mcfg.Delegate = allocDelegate{alloc: a.alloc, relays: a.relays, log: a.log, key: a.handleKeyMsg, open: a.openDirect, refusals: &refusalLog{}}
	mcfg.Detour = a.gossipDetour
	if a.mesh, err = mesh.New(mcfg); err != nil {
		return err
	}
	a.restorePeers(time.Now())
	bridge.m = a.mesh
	if cfg.InstallCNI {
		res, err := install.Install(context.Background(), install.Config{
			BinDir: cfg.CNIBinDir, ConfDir: cfg.CNIConfDir, Socket: cfg.SocketPath(), Log: a.log,
		})
		if err != nil {
			return fmt.Errorf("install the CNI plugin: %w", err)
		}
		a.log.Info("CNI plugin installed", "binary", res.Binary, "conflist", res.Conflist, "cni-versions", res.CNIVersions)
	}
	a.log.Info("weft daemon starting", "node", cfg.NodeName, "underlay", u.Addr, "iface", u.Iface,
		"endpoint", a.endpoint, "wg-mode", a.tun.Mode(), "mtu", a.mtu, "public-key", a.key.PublicKey().String())
	return nil
}

// teardown releases what setup opened, and reports whether a successor
// took the tunnel. The tunnel device, its routes and rules stay: the data
// path outlives the daemon. With a successor, the state is closed before
// the tunnel is handed over, so that the successor may open it.
func (a *agent) teardown() (handedOver bool) {
	if a.alloc != nil {
		if err := a.alloc.Close(); err != nil {
			a.log.Warn("close allocator state", "err", err)
		}
	}
	if a.tun != nil {
		if a.successor != nil {
			handedOver = a.handOver(a.successor)
		} else if err := a.tun.Close(); err != nil {
			a.log.Warn("close tunnel", "err", err)
		}
	}
	a.closeHandoff()
	if a.nl != nil {
		a.nl.Close()
	}
	return handedOver
}

// meta is this node's gossip metadata from what it knows now.
func (a *agent) meta() mesh.Meta {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := mesh.Meta{
		Proto:       mesh.ProtoVersion,
		Name:        a.cfg.NodeName,
		PublicKey:   a.key.PublicKey(),
		Endpoint:    a.endpoint,
		TunnelAddr:  a.tunnelAddr,
		TunnelAddr6: a.tunnelAddr6,
		ProbeAddr:   a.probeAddr,
		NATKind:     a.natKind,
	}
	if a.rot.pending() {
		m.NextPublicKey = a.rot.next.PublicKey()
	}
	m.Secrets = a.secrets.fingerprints()
	if a.reflexive.IsValid() {
		m.Reflexive = a.reflexive.String()
	}
	return m
}

// parseIPAllocInit reads --ipalloc-init: "seed=NODE1,NODE2,..." or empty.
func parseIPAllocInit(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	v, ok := strings.CutPrefix(s, "seed=")
	if !ok {
		return nil, fmt.Errorf("--ipalloc-init %q: want seed=NODE1,NODE2,... (the same list on every node)", s)
	}
	var out []string
	for _, n := range strings.Split(v, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--ipalloc-init %q names no node", s)
	}
	return out, nil
}

// nodeKey is the allocation of this node's own tunnel address.
func (a *agent) nodeKey() ipalloc.Key {
	return ipalloc.Key{ContainerID: "weft-node:" + a.cfg.NodeName, IfName: a.cfg.Iface}
}

// probeKey is the allocation of this node's probe address.
func (a *agent) probeKey() ipalloc.Key {
	return ipalloc.Key{ContainerID: "weft-probe:" + a.cfg.NodeName, IfName: a.cfg.Iface}
}

// ownKey reports whether k is an allocation of the node itself (tunnel or
// probe address), which no pod's release or GC may free.
func (a *agent) ownKey(k ipalloc.Key) bool { return k == a.nodeKey() || k == a.probeKey() }

// claimTunnelAddr allocates this node's address on the overlay and its
// probe address (retrying until the allocator has space), puts them on the
// tunnel device and tells the mesh.
func (a *agent) claimTunnelAddr(ctx context.Context) error {
	delay := 200 * time.Millisecond
	for {
		addr, err := a.alloc.Allocate(ctx, a.nodeKey(), map[string]string{"owner": "node"})
		var probe netip.Addr
		if err == nil {
			probe, err = a.alloc.Allocate(ctx, a.probeKey(), map[string]string{"owner": "node-probe"})
		}
		if err == nil {
			a.mu.Lock()
			a.tunnelAddr, a.tunnelAddr6, a.probeAddr = addr, a.alloc.Paired(addr), probe
			a.mu.Unlock()
			if err := a.mesh.SetMeta(a.meta()); err != nil {
				return fmt.Errorf("publish tunnel address: %w", err)
			}
			a.log.Info("tunnel address claimed", "addr", addr, "addr6", a.alloc.Paired(addr), "probe-addr", probe)
			a.trigger()
			return nil
		}
		a.setNotReady("no tunnel address yet: " + err.Error())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

func (a *agent) setNotReady(reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ready = false
	a.notReady = reason
}

// trigger asks the reconcile loop for a pass soon; it never blocks.
func (a *agent) trigger() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}
