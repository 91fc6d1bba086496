package daemon

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"runtime/debug"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/policy"
)

// policySync is how often the rules in the kernel are compared with the
// wanted ones and repaired.
const policySync = 30 * time.Second

// policyDebounce gathers a burst of changes into one compile and apply.
const policyDebounce = 50 * time.Millisecond

// PolicyStatus is `weft status policy --json`.
type PolicyStatus struct {
	Enforcing bool   `json:"enforcing"`
	Reason    string `json:"reason,omitempty"` // why not enforcing
	// ClusterPolicies: the ClusterNetworkPolicy CRD is served and watched,
	// so the Admin and Baseline tiers are enforced too.
	ClusterPolicies bool                   `json:"clusterNetworkPolicies"`
	Policies        []policy.PolicySummary `json:"policies"`
	Pods            []policy.PodSummary    `json:"pods"`
	Drops           []policy.DropCount     `json:"drops"`
	Recent          []policy.Drop          `json:"recentDrops"` // sampled drops with their reason, oldest first
	Warnings        []string               `json:"warnings,omitempty"`
	Applied         string                 `json:"applied,omitempty"` // when the rules last changed, RFC 3339
}

// policyLoop watches Pods, Namespaces, Nodes, NetworkPolicies and
// ClusterNetworkPolicies through informers and keeps the nftables rules of
// this node's pods in step: a change is compiled and applied as one atomic
// batch, and a periodic sync repairs drift. The rules stay when the daemon stops.
func (a *agent) policyLoop(ctx context.Context, client kubernetes.Interface, restCfg *rest.Config) error {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(kube.PolicyTransform))
	pods := f.Core().V1().Pods()
	nss := f.Core().V1().Namespaces()
	nps := f.Networking().V1().NetworkPolicies()
	nodes := f.Core().V1().Nodes()
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	for _, inf := range []cache.SharedIndexInformer{pods.Informer(), nss.Informer(), nps.Informer(), nodes.Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("watch for NetworkPolicy: %w", err)
		}
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	// ClusterNetworkPolicies, when their CRD is installed.
	cnps := &clusterPolicies{cfg: restCfg, onChange: poke}
	cnpCtx, cnpStop := context.WithCancel(ctx)
	cnpDone := make(chan struct{})
	go func() {
		defer close(cnpDone)
		if err := cnps.Run(cnpCtx); err != nil {
			a.log.Warn("ClusterNetworkPolicies are not enforced", "err", err)
		}
	}()
	defer func() { cnpStop(); <-cnpDone }()
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok && ctx.Err() == nil {
			return fmt.Errorf("NetworkPolicy: the %v cache never synced", typ)
		}
	}
	applier := policy.NewApplier(policy.Config{Logger: a.log.With("part", "policy")})
	drops := policy.NewDropLog(policy.DropLogConfig{Logger: a.log.With("part", "policy"), Explain: a.explainDrop})
	a.mu.Lock()
	a.applier = applier
	a.drops = drops
	a.mu.Unlock()
	dropsDone := make(chan struct{})
	go func() {
		defer close(dropsDone)
		if err := drops.Run(ctx); err != nil {
			a.log.Warn("sampled NetworkPolicy drops are not logged; the counters still count them", "err", err)
		}
	}()
	defer func() { <-dropsDone }()
	sync := time.NewTicker(policySync)
	defer sync.Stop()
	poke()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sync.C:
			if err := applier.Sync(); err != nil {
				a.metrics.observePolicyRepairError()
				a.log.Warn("repair NetworkPolicy rules", "err", err)
			}
			continue
		case <-kick:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(policyDebounce):
		}
		start := time.Now()
		in := policy.Input{NodeName: a.cfg.NodeName, NodeAddrs: a.nodeAddrs()}
		podList, _ := pods.Lister().List(labels.Everything())
		nsList, _ := nss.Lister().List(labels.Everything())
		npList, _ := nps.Lister().List(labels.Everything())
		nodeList, _ := nodes.Lister().List(labels.Everything())
		in.Nodes = nodeList
		in.ClusterPolicies = cnps.List()
		watching := cnps.Watching()
		in.Pods = append([]*corev1.Pod(nil), podList...)
		in.Namespaces = nsList
		in.Policies = append([]*networkingv1.NetworkPolicy(nil), npList...)
		rs := policy.Compile(in)
		before := applier.Writes()
		err := applier.Apply(rs)
		a.metrics.observePolicyApply(time.Since(start), err)
		if err != nil {
			a.log.Warn("apply NetworkPolicy rules; retrying", "err", err)
			go func() {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
					poke()
				}
			}()
			continue
		}
		a.mu.Lock()
		a.ruleSet = rs
		a.clusterWatched = watching
		a.explainer = policy.NewExplainer(in, rs)
		first := a.policyApplied.IsZero()
		if applier.Writes() != before || first {
			a.policyApplied = time.Now()
		}
		a.mu.Unlock()
		if first {
			// The first LIST of a large cluster and the first compile
			// leave garbage several times the size of the caches; an idle
			// daemon would keep it as resident memory for minutes.
			debug.FreeOSMemory()
		}
	}
}

// explainDrop says why the rules in force drop pkt: the reason `weft why`
// gives for it.
func (a *agent) explainDrop(pkt policy.Packet) string {
	a.mu.Lock()
	e := a.explainer
	a.mu.Unlock()
	if e == nil {
		return "no NetworkPolicy rules applied yet"
	}
	return e.ExplainDrop(pkt)
}

// Why answers `weft why` from the objects and rules in force on this
// node: egress is judged with the rules of the source pod's node, ingress
// with those of the destination pod's node, compiled from the same
// cluster-wide objects.
func (a *agent) Why(_ context.Context, req api.WhyRequest) (WhyAnswer, error) {
	a.mu.Lock()
	e, applier := a.explainer, a.applier
	a.mu.Unlock()
	if e == nil {
		msg := "no NetworkPolicy rules applied yet; try again in a moment"
		if applier == nil && a.kube == nil {
			msg = "NetworkPolicy is enforced only with Kubernetes (--kubeconfig or in a pod)"
		}
		return WhyAnswer{}, &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeNotReady, Message: msg}
	}
	pkt, err := whyPacket(e, req)
	if err != nil {
		return WhyAnswer{}, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: err.Error()}
	}
	return WhyAnswer{AnsweredBy: a.cfg.NodeName, Verdict: e.WhyCluster(pkt, a.peerAddrs)}, nil
}

// peerAddrs are a peer's own addresses as the mesh knows them: its tunnel
// address and the host of its endpoint.
func (a *agent) peerAddrs(node string) []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	kp := a.peers[node]
	if kp == nil {
		return nil
	}
	var out []netip.Addr
	for _, ad := range []netip.Addr{kp.TunnelAddr, kp.TunnelAddr6} {
		if ad.IsValid() {
			out = append(out, ad)
		}
	}
	if ep := kp.peer.Endpoint; ep != nil {
		if ip, ok := netip.AddrFromSlice(ep.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// nodeAddrs are this node's own addresses: traffic from them to local pods
// (kubelet probes) is always allowed.
func (a *agent) nodeAddrs() []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := []netip.Addr{a.underlay.Addr}
	for _, ad := range []netip.Addr{a.tunnelAddr, a.tunnelAddr6} {
		if ad.IsValid() {
			out = append(out, ad)
		}
	}
	return out
}

func (a *agent) policyStatus() (PolicyStatus, error) {
	a.mu.Lock()
	applier, rs, applied, dl, watched := a.applier, a.ruleSet, a.policyApplied, a.drops, a.clusterWatched
	a.mu.Unlock()
	if applier == nil {
		return PolicyStatus{Reason: "NetworkPolicy is enforced only with Kubernetes (--kubeconfig or in a pod)",
			Policies: []policy.PolicySummary{}, Pods: []policy.PodSummary{}, Drops: []policy.DropCount{}, Recent: []policy.Drop{}}, nil
	}
	sum := rs.Summary()
	st := PolicyStatus{Enforcing: true, ClusterPolicies: watched, Policies: sum.Policies, Pods: sum.Pods, Warnings: rs.Warnings}
	if !applied.IsZero() {
		st.Applied = applied.UTC().Format(time.RFC3339)
	}
	drops, err := applier.Drops()
	if err != nil {
		return st, fmt.Errorf("read drop counters: %w", err)
	}
	st.Drops = drops
	st.Recent = dl.Recent()
	if st.Recent == nil {
		st.Recent = []policy.Drop{}
	}
	if st.Policies == nil {
		st.Policies = []policy.PolicySummary{}
	}
	if st.Pods == nil {
		st.Pods = []policy.PodSummary{}
	}
	if st.Drops == nil {
		st.Drops = []policy.DropCount{}
	}
	return st, nil
}
