package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
)

// ReclaimerConfig says how a Reclaimer acts on deleted Nodes.
type ReclaimerConfig struct {
	// Client is the Kubernetes API. Required.
	Client kubernetes.Interface
	// Self is this daemon's Node name. Required.
	Self string
	// Nodes is the running Node watcher whose Deleted the Reclaimer reads
	// (it must be its only reader). Required.
	Nodes *Nodes
	// Reclaim takes over the address ranges of a dead node, e.g.
	// ipalloc's Allocator.Rmpeer. It is called only on the one node that
	// won the claim, and again after an error until it succeeds. Required.
	Reclaim func(ctx context.Context, node string) error
	// Alive says whether node still answers in the mesh. A node whose Node
	// object was deleted but whose daemon still runs (the kubelet will
	// register it again) is not reclaimed while it is alive. Default:
	// never alive.
	Alive func(node string) bool
	// Owners lists the nodes that own address ranges in the ring. When
	// set, owners that are neither Nodes nor alive are reclaimed too, at
	// start and every PruneInterval: these are Nodes deleted while no
	// daemon watched. Default: none.
	Owners func() []string
	// Done, when set, is called once the Reclaimer is through with a
	// deleted node: reclaimed says whether this node reclaimed its ranges
	// (false: another node holds the claim, or the Node came back). Not
	// called when it gives up or ctx ends first.
	Done func(node string, reclaimed bool)
	// RetryInterval is the wait between attempts on one deleted node
	// (while it is alive, or after an error). Default: 10 seconds.
	RetryInterval time.Duration
	// GiveUpAfter bounds the attempts on one deleted node. Default: 1 hour.
	GiveUpAfter time.Duration
	// PruneInterval is how often claims older than DefaultReclaimTTL are
	// deleted and Owners checked. Default: 1 hour.
	PruneInterval time.Duration
	// Logger gets every decision. Default: discard.
	Logger *slog.Logger
}

// Reclaimer reclaims the address ranges of deleted Nodes, exactly once in
// the cluster: on every deletion each daemon's Reclaimer calls
// ClaimReclaim, and only the winner calls Reclaim. It also deletes the old
// claim on its own node at start (ReleaseReclaim) and prunes old claims.
type Reclaimer struct {
	cfg ReclaimerConfig
	log *slog.Logger
}

// NewReclaimer checks cfg and fills in its defaults; Run starts it.
func NewReclaimer(cfg ReclaimerConfig) (*Reclaimer, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("kube reclaimer: no client")
	case cfg.Self == "":
		return nil, errors.New("kube reclaimer: no node name (Self)")
	case cfg.Nodes == nil:
		return nil, errors.New("kube reclaimer: no Node watcher")
	case cfg.Reclaim == nil:
		return nil, errors.New("kube reclaimer: no Reclaim function")
	}
	if cfg.Alive == nil {
		cfg.Alive = func(string) bool { return false }
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 10 * time.Second
	}
	if cfg.GiveUpAfter <= 0 {
		cfg.GiveUpAfter = time.Hour
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Reclaimer{cfg: cfg, log: cfg.Logger}, nil
}

// Run handles deletions until ctx is done, then waits for the attempts in
// flight to stop and returns nil.
func (r *Reclaimer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	inFlight := map[string]bool{}
	start := func(node string) {
		mu.Lock()
		defer mu.Unlock()
		if inFlight[node] || node == r.cfg.Self {
			return
		}
		inFlight[node] = true
		wg.Go(func() {
			r.handle(ctx, node)
			mu.Lock()
			delete(inFlight, node)
			mu.Unlock()
		})
	}

	if err := ReleaseReclaim(ctx, r.cfg.Client, r.cfg.Self); err != nil {
		r.log.Warn("could not delete the old reclaim claim on this node; a later deletion of its Node may not be reclaimed", "node", r.cfg.Self, "err", err)
	}
	tick := time.NewTicker(r.cfg.PruneInterval)
	defer tick.Stop()
	synced := r.cfg.Nodes.Synced()
	for {
		select {
		case <-ctx.Done():
			return nil
		case node := <-r.cfg.Nodes.Deleted():
			start(node)
		case <-synced:
			synced = nil
			for _, n := range r.orphans() {
				start(n)
			}
		case <-tick.C:
			if n, err := PruneReclaims(ctx, r.cfg.Client, DefaultReclaimTTL); err != nil {
				r.log.Warn("prune old reclaim claims", "err", err)
			} else if n > 0 {
				r.log.Info("pruned old reclaim claims", "count", n)
			}
			for _, n := range r.orphans() {
				start(n)
			}
		}
	}
}

// orphans are ring owners with no Node that do not answer in the mesh.
func (r *Reclaimer) orphans() []string {
	if r.cfg.Owners == nil {
		return nil
	}
	names := r.cfg.Nodes.Names()
	var out []string
	for _, o := range r.cfg.Owners() {
		if o != r.cfg.Self && !slices.Contains(names, o) && !r.cfg.Alive(o) {
			out = append(out, o)
		}
	}
	return out
}

// handle claims and, when it wins, reclaims one deleted node, retrying
// while the node is alive or on errors, until GiveUpAfter.
func (r *Reclaimer) handle(ctx context.Context, node string) {
	log := r.log.With("peer", node)
	deadline := time.Now().Add(r.cfg.GiveUpAfter)
	for {
		done, reclaimed, err := r.attempt(ctx, node, log)
		if done {
			if r.cfg.Done != nil {
				r.cfg.Done(node, reclaimed)
			}
			return
		}
		if time.Now().After(deadline) {
			log.Error("gave up reclaiming the address ranges of a deleted Node; run `weft rmpeer` for it on one node", "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(r.cfg.RetryInterval):
		}
	}
}

// attempt makes one try; done says there is nothing more to do, reclaimed
// that this node reclaimed the ranges.
func (r *Reclaimer) attempt(ctx context.Context, node string, log *slog.Logger) (done, reclaimed bool, err error) {
	if r.cfg.Alive(node) {
		log.Info("Node deleted but its daemon still answers; waiting before reclaiming its ranges")
		return false, false, fmt.Errorf("%s is still alive", node)
	}
	won, err := ClaimReclaim(ctx, r.cfg.Client, node, r.cfg.Self)
	switch {
	case errors.Is(err, ErrNodeExists):
		log.Info("Node registered again; not reclaiming its ranges")
		return true, false, nil
	case err != nil:
		log.Warn("claim the reclaim of a deleted Node", "err", err)
		return false, false, err
	case !won:
		holder, _ := ReclaimHolder(ctx, r.cfg.Client, node)
		log.Info("another node reclaims the ranges of the deleted Node", "holder", holder)
		return true, false, nil
	}
	if err := r.cfg.Reclaim(ctx, node); err != nil {
		log.Warn("reclaim the ranges of a deleted Node", "err", err)
		return false, false, err
	}
	log.Info("reclaimed the address ranges of a deleted Node")
	return true, true, nil
}
