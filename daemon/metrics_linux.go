package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/ipalloc"
)

// metricsCollector reads the daemon's state when Prometheus scrapes, so the
// numbers are never stale and nothing is counted twice. What is counted as
// it happens (CNI requests, policy applies) is in metrics.
type metricsCollector struct{ a *agent }

// emit hands one metric to the scrape; the collect functions below take it
// so they can be tested on plain status data.
type emit func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string)

var (
	descReady        = prometheus.NewDesc("weft_ready", "1 when this node can network pods (tunnel address, tunnel set up, in the mesh).", nil, nil)
	descMembers      = prometheus.NewDesc("weft_mesh_members", "Members of the gossip mesh this node sees, itself included.", nil, nil)
	descHealth       = prometheus.NewDesc("weft_mesh_health_score", "memberlist's health score of this node (0 is best).", nil, nil)
	descReconcileErr = prometheus.NewDesc("weft_reconcile_failing", "1 while the last reconcile of tunnel, routes and rules failed.", nil, nil)

	descPeerUp       = prometheus.NewDesc("weft_peer_up", "1 when the peer is alive in the mesh.", []string{"peer"}, nil)
	descRelayed      = prometheus.NewDesc("weft_peer_relayed", "1 when traffic to the peer goes through a relay.", []string{"peer", "via"}, nil)
	descPath         = prometheus.NewDesc("weft_peer_path", "1 for the path traffic to the peer takes now (direct, relayed, or none when the peer is refused), 0 for the others.", []string{"peer", "path"}, nil)
	descHandshake    = prometheus.NewDesc("weft_peer_last_handshake_seconds", "Unix time of the last WireGuard handshake with the peer.", []string{"peer"}, nil)
	descHandshakeAge = prometheus.NewDesc("weft_peer_handshake_age_seconds", "Seconds since the last WireGuard handshake with the peer (absent before the first one).", []string{"peer"}, nil)
	descRx           = prometheus.NewDesc("weft_peer_receive_bytes_total", "Bytes received from the peer through the tunnel.", []string{"peer"}, nil)
	descTx           = prometheus.NewDesc("weft_peer_transmit_bytes_total", "Bytes sent to the peer through the tunnel.", []string{"peer"}, nil)

	descIPAMReady     = prometheus.NewDesc("weft_ipam_ready", "1 when this node can hand out pod addresses (it has joined the ring and owns space or can get some).", nil, nil)
	descRangeSize     = prometheus.NewDesc("weft_ipam_range_addresses", "Addresses in the whole pod range (--pod-cidr).", nil, nil)
	descOwned         = prometheus.NewDesc("weft_ipam_owned_addresses", "Addresses in the ranges this node owns.", nil, nil)
	descUsed          = prometheus.NewDesc("weft_ipam_used_addresses", "Addresses in use in the ranges this node owns.", nil, nil)
	descFree          = prometheus.NewDesc("weft_ipam_free_addresses", "Free addresses in the ranges this node owns.", nil, nil)
	descAllocs        = prometheus.NewDesc("weft_ipam_allocations", "Addresses this node has handed out (its own tunnel address included).", nil, nil)
	descUnreachAddrs  = prometheus.NewDesc("weft_ipam_unreachable_addresses", "Addresses owned by nodes this node cannot reach: candidates for `weft rmpeer` if those nodes are gone.", nil, nil)
	descUnreach       = prometheus.NewDesc("weft_ipam_unreachable_share", "Share of the pod range owned by unreachable nodes (0 to 1).", nil, nil)
	descKeyRotation   = prometheus.NewDesc("weft_key_rotation_pending", "1 while a rotation of this node's WireGuard key waits for its peers to ack the next key.", nil, nil)
	descKeyRotations  = prometheus.NewDesc("weft_key_rotations_total", "Switches to a new WireGuard key this daemon made since it started.", nil, nil)
	descSecretsHeld   = prometheus.NewDesc("weft_cluster_secrets_held", "Cluster secrets this node holds: 2 or more during a secret rotation's overlap, 0 with --insecure.", nil, nil)
	descPendingClaims = prometheus.NewDesc("weft_ipam_pending_claims", "Reclaims of a dead node's ranges this node made that its live peers have not all confirmed yet.", nil, nil)
)

// peerPaths are the values of weft_peer_path's path label.
var peerPaths = []string{"direct", "relayed", "none"}

func (c metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descMembers, descHealth, descReconcileErr,
		descPeerUp, descRelayed, descPath, descHandshake, descHandshakeAge, descRx, descTx, descPeerPMTU, descPeerRTT, descPeerLoss, descDirect,
		descIPAMReady, descRangeSize, descOwned, descUsed, descFree, descAllocs, descUnreachAddrs, descUnreach, descPendingClaims,
		descKeyRotation, descKeyRotations, descSecretsHeld} {
		ch <- d
	}
	for _, d := range policyDescs {
		ch <- d
	}
}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	e := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	e(descReady, prometheus.GaugeValue, b2f(a.Ready().Ready))
	h := a.mesh.Health()
	e(descMembers, prometheus.GaugeValue, float64(h.Members+1))
	e(descHealth, prometheus.GaugeValue, float64(h.Score))
	a.mu.Lock()
	failing := a.lastErr != ""
	a.mu.Unlock()
	e(descReconcileErr, prometheus.GaugeValue, b2f(failing))
	if st, err := a.peersStatus(); err == nil {
		collectPeers(e, st.Peers, nowUnix())
		collectRotation(e, st)
	} else {
		a.log.Debug("metrics: read peers", "err", err)
	}
	collectIPAM(e, a.alloc.Status(a.reachable))
	collectPolicy(e, a.policyState())
}

// collectPeers reports each named peer; now is the Unix time of the scrape.
func collectPeers(e emit, peers []PeerStatus, now int64) {
	live, direct := 0, 0
	for _, p := range peers {
		if p.Name != "" && p.State == "alive" {
			live++
			if p.Path == "direct" {
				direct++
			}
		}
	}
	share := 1.0
	if live > 0 {
		share = float64(direct) / float64(live)
	}
	e(descDirect, prometheus.GaugeValue, share)
	for _, p := range peers {
		name := p.Name
		if name == "" {
			continue
		}
		e(descPeerUp, prometheus.GaugeValue, b2f(p.State == "alive"), name)
		e(descRelayed, prometheus.GaugeValue, b2f(p.Path == "relayed"), name, p.Via)
		for _, path := range peerPaths {
			e(descPath, prometheus.GaugeValue, b2f(p.Path == path), name, path)
		}
		if p.LastHandshake != "" {
			e(descHandshake, prometheus.GaugeValue, float64(now)-p.HandshakeAge, name)
			e(descHandshakeAge, prometheus.GaugeValue, p.HandshakeAge, name)
		}
		e(descRx, prometheus.CounterValue, float64(p.RxBytes), name)
		e(descTx, prometheus.CounterValue, float64(p.TxBytes), name)
		if p.PMTU > 0 {
			e(descPeerPMTU, prometheus.GaugeValue, float64(p.PMTU), name)
		}
		if p.RTT > 0 {
			e(descPeerRTT, prometheus.GaugeValue, p.RTT, name)
		}
		if p.DirectPath != "" {
			e(descPeerLoss, prometheus.GaugeValue, p.ProbeLoss, name)
		}
	}
}

// collectRotation reports the key rotation and the secrets held.
func collectRotation(e emit, st PeersStatus) {
	e(descKeyRotation, prometheus.GaugeValue, b2f(st.KeyRotation.State == "pending"))
	e(descKeyRotations, prometheus.CounterValue, float64(st.KeyRotation.Rotations))
	held := 0
	if st.Secrets != nil {
		held = len(st.Secrets.Held)
	}
	e(descSecretsHeld, prometheus.GaugeValue, float64(held))
}

// collectIPAM reports the ring as this node (st.Self) sees it. A node that
// owns no range yet reports 0 owned, used and free.
func collectIPAM(e emit, st ipalloc.Status) {
	e(descIPAMReady, prometheus.GaugeValue, b2f(st.Ready))
	e(descRangeSize, prometheus.GaugeValue, float64(st.Size))
	var self ipalloc.NodeStatus
	for _, n := range st.Nodes {
		if n.Name == st.Self {
			self = n
		}
	}
	e(descOwned, prometheus.GaugeValue, float64(self.Size))
	e(descUsed, prometheus.GaugeValue, float64(self.Used))
	e(descFree, prometheus.GaugeValue, float64(self.Free))
	e(descAllocs, prometheus.GaugeValue, float64(st.Allocations))
	e(descUnreachAddrs, prometheus.GaugeValue, float64(st.UnreachableAddresses))
	e(descUnreach, prometheus.GaugeValue, st.UnreachableShare)
	e(descPendingClaims, prometheus.GaugeValue, float64(len(st.PendingClaims)))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
