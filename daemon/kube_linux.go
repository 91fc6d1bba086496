package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/kube"
)

// nodesSyncTimeout bounds the wait for the first list of Nodes at start.
const nodesSyncTimeout = time.Minute

// setupKube connects to Kubernetes when there is one (--kubeconfig, or the
// in-cluster config in a pod), starts the Node watcher and returns the seeds
// it gives and the ring's genesis from the API (when --ipalloc-init does not
// set one). Without Kubernetes it returns nothing and the daemon runs on
// --peers alone.
func (a *agent) setupKube(ctx context.Context, g *errgroup.Group) (seeds, genesis []string, err error) {
	client, restCfg, err := kube.NewClient(a.cfg.Kubeconfig)
	if errors.Is(err, kube.ErrNoKubernetes) {
		if a.cfg.IPAllocInit == "kube" {
			return nil, nil, fmt.Errorf("--ipalloc-init kube needs Kubernetes: %w", err)
		}
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	a.kube, a.kubeREST = client, restCfg
	a.nodes, err = kube.NewNodes(kube.NodesConfig{
		Client: client, Self: a.cfg.NodeName, UseExternalIP: a.cfg.UseExternalIP, Logger: a.log.With("part", "kube"),
	})
	if err != nil {
		return nil, nil, err
	}
	g.Go(func() error { return a.nodes.Run(ctx) })
	select {
	case <-a.nodes.Synced():
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	case <-time.After(nodesSyncTimeout):
		return nil, nil, fmt.Errorf("could not list the cluster's Nodes within %v: check --kubeconfig and that the ServiceAccount may list nodes", nodesSyncTimeout)
	}
	seeds = a.nodes.Seeds()
	if a.cfg.IPAllocInit == "" || a.cfg.IPAllocInit == "kube" {
		// The first daemon seeds the ring with itself alone: a Node that
		// never runs weft (another OS, a node pool on another network)
		// would otherwise keep a share nobody can use. The others get
		// space by donation, which takes one request.
		genesis, err = kube.EnsureGenesisDual(ctx, client, a.cfg.PodCIDR, a.cfg.PodCIDR6, []string{a.cfg.NodeName})
		if err != nil {
			return nil, nil, fmt.Errorf("the address ring's genesis from Kubernetes: %w", err)
		}
		a.log.Info("address ring genesis from Kubernetes", "seed", genesis)
	}
	a.log.Info("using Kubernetes", "nodes", len(a.nodes.Names()), "seeds", seeds)
	return seeds, genesis, nil
}

// runKube starts what follows the cluster: joining new Nodes as they
// appear, reclaiming the ranges of deleted Nodes (exactly once in the
// cluster), publishing this node's key and endpoint on its Node, and
// NetworkPolicy.
func (a *agent) runKube(ctx context.Context, g *errgroup.Group) {
	g.Go(func() error {
		// New Nodes are joined as they appear, and all of them again now
		// and then: a Node is usually registered before its daemon runs.
		rejoin := time.NewTicker(30 * time.Second)
		defer rejoin.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-a.nodes.Changes():
			case <-rejoin.C:
			}
			if n, err := a.mesh.Join(ctx, a.nodes.Seeds()); n > 0 {
				a.log.Info("joined new Nodes", "contacted", n)
			} else if err != nil {
				a.log.Debug("join new Nodes", "err", err)
			}
		}
	})
	rec, err := kube.NewReclaimer(kube.ReclaimerConfig{
		Client: a.kube,
		Self:   a.cfg.NodeName,
		Nodes:  a.nodes,
		Reclaim: func(ctx context.Context, node string) error {
			msg, err := a.alloc.Rmpeer(ctx, node)
			if err != nil {
				return err
			}
			a.log.Info("reclaimed the ranges of a deleted Node", "node", node, "result", msg)
			a.forgetPeer(node)
			return nil
		},
		Alive: func(node string) bool { return node != a.cfg.NodeName && a.reachable(node) },
		Owners: func() []string {
			var out []string
			for o := range a.alloc.Ranges() {
				out = append(out, o)
			}
			return out
		},
		Done: func(node string, reclaimed bool) {
			if !reclaimed {
				a.forgetPeer(node)
			}
		},
		Logger: a.log.With("part", "kube"),
	})
	if err != nil {
		g.Go(func() error { return err })
		return
	}
	g.Go(func() error { return rec.Run(ctx) })
	g.Go(func() error { return a.publishNode(ctx) })
	g.Go(func() error { return a.policyLoop(ctx, a.kube, a.kubeREST) })
}

// publishNode writes this node's public key, endpoint and tunnel address
// on its Node object, and marks the Node's network available once the
// tunnel is up; it keeps them right when they change.
func (a *agent) publishNode(ctx context.Context) error {
	var published kube.NodeInfo
	available := false
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		ready := a.Ready().Ready
		a.mu.Lock()
		info := kube.NodeInfo{PublicKey: a.key.PublicKey().String(), Endpoint: a.endpoint}
		if a.rot.pending() {
			info.NextPublicKey = a.rot.next.PublicKey().String()
		}
		if a.tunnelAddr.IsValid() {
			info.TunnelAddr = a.tunnelAddr.String()
		}
		if a.tunnelAddr6.IsValid() {
			info.TunnelAddr6 = a.tunnelAddr6.String()
		}
		a.mu.Unlock()
		if info != published {
			if err := kube.PublishNode(ctx, a.kube, a.cfg.NodeName, info); err != nil {
				a.log.Warn("publish this node's key and endpoint on its Node", "err", err)
				continue
			}
			published = info
		}
		if ready && !available {
			if err := kube.SetNetworkAvailable(ctx, a.kube, a.cfg.NodeName); err != nil {
				a.log.Warn("set the Node's NetworkUnavailable condition to false", "err", err)
				continue
			}
			available = true
			a.log.Info("the Node's network is available")
		}
	}
}
