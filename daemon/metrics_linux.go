package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metricsCollector reads the daemon's state when Prometheus scrapes, so the
// numbers are never stale and nothing is counted twice.
type metricsCollector struct{ a *agent }

var (
	descReady        = prometheus.NewDesc("weft_ready", "1 when this node can network pods (tunnel address, tunnel set up, in the mesh).", nil, nil)
	descMembers      = prometheus.NewDesc("weft_mesh_members", "Members of the gossip mesh this node sees, itself included.", nil, nil)
	descHealth       = prometheus.NewDesc("weft_mesh_health_score", "memberlist's health score of this node (0 is best).", nil, nil)
	descPeerUp       = prometheus.NewDesc("weft_peer_up", "1 when the peer is alive in the mesh.", []string{"peer"}, nil)
	descRelayed      = prometheus.NewDesc("weft_peer_relayed", "1 when traffic to the peer goes through a relay.", []string{"peer", "via"}, nil)
	descHandshake    = prometheus.NewDesc("weft_peer_last_handshake_seconds", "Unix time of the last WireGuard handshake with the peer.", []string{"peer"}, nil)
	descRx           = prometheus.NewDesc("weft_peer_receive_bytes_total", "Bytes received from the peer through the tunnel.", []string{"peer"}, nil)
	descTx           = prometheus.NewDesc("weft_peer_transmit_bytes_total", "Bytes sent to the peer through the tunnel.", []string{"peer"}, nil)
	descAllocs       = prometheus.NewDesc("weft_ipam_allocations", "Addresses this node has handed out (its own tunnel address included).", nil, nil)
	descFree         = prometheus.NewDesc("weft_ipam_free_addresses", "Free addresses in the ranges this node owns.", nil, nil)
	descUnreach      = prometheus.NewDesc("weft_ipam_unreachable_share", "Share of the pod range owned by unreachable nodes (0 to 1).", nil, nil)
	descReconcileErr = prometheus.NewDesc("weft_reconcile_failing", "1 while the last reconcile of tunnel, routes and rules failed.", nil, nil)
)

func (c metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descMembers, descHealth, descPeerUp, descRelayed, descHandshake,
		descRx, descTx, descAllocs, descFree, descUnreach, descReconcileErr, descPeerPMTU} {
		ch <- d
	}
}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	gauge(descReady, b2f(a.Ready().Ready))
	h := a.mesh.Health()
	gauge(descMembers, float64(h.Members+1))
	gauge(descHealth, float64(h.Score))
	if st, err := a.peersStatus(); err == nil {
		for _, p := range st.Peers {
			name := p.Name
			if name == "" {
				continue
			}
			gauge(descPeerUp, b2f(p.State == "alive"), name)
			gauge(descRelayed, b2f(p.Path == "relayed"), name, p.Via)
			if p.LastHandshake != "" {
				gauge(descHandshake, float64(nowUnix())-p.HandshakeAge, name)
			}
			ch <- prometheus.MustNewConstMetric(descRx, prometheus.CounterValue, float64(p.RxBytes), name)
			ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(p.TxBytes), name)
			if p.PMTU > 0 {
				gauge(descPeerPMTU, float64(p.PMTU), name)
			}
		}
	}
	ist := a.alloc.Status(a.reachable)
	gauge(descAllocs, float64(ist.Allocations))
	for _, n := range ist.Nodes {
		if n.Name == a.cfg.NodeName {
			gauge(descFree, float64(n.Free))
		}
	}
	gauge(descUnreach, ist.UnreachableShare)
	a.mu.Lock()
	failing := a.lastErr != ""
	a.mu.Unlock()
	gauge(descReconcileErr, b2f(failing))
}
