package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// NodesConfig says what a Nodes watcher watches.
type NodesConfig struct {
	// Client is the Kubernetes API. Required.
	Client kubernetes.Interface
	// Self is this daemon's Node name; it is left out of Seeds. Required.
	Self string
	// UseExternalIP makes Seeds use each Node's ExternalIP, for clusters
	// across clouds or sites where InternalIPs do not reach each other. A
	// Node without an ExternalIP falls back to its InternalIP.
	UseExternalIP bool
	// Resync is how often the informer replays every Node to the handlers,
	// so a missed event heals. Default: 5 minutes.
	Resync time.Duration
	// Logger gets what the watcher sees. Default: discard.
	Logger *slog.Logger
}

// Nodes watches the cluster's Node objects with an informer (a list, then
// a watch; no polling) and keeps the address of each one. Seeds, Names and
// Synced are safe for concurrent use; Changes and Deleted are read by one
// consumer, the daemon.
type Nodes struct {
	cfg      NodesConfig
	log      *slog.Logger
	changes  chan struct{}
	deleted  chan string
	synced   chan struct{}
	pending  chan struct{} // wakes the pump of deleted names
	informer cache.SharedIndexInformer

	mu         sync.Mutex
	addrs      map[string]string // node name -> its seed address ("" when it has none yet)
	keys       map[string]string // node name -> its AnnotationPublicKey, when set
	nextKeys   map[string]string // node name -> its AnnotationNextPublicKey, when set
	deletedQ   []string          // deleted names not yet handed to Deleted's reader
	runStarted bool
}

// NewNodes makes a watcher; Run starts it.
func NewNodes(cfg NodesConfig) (*Nodes, error) {
	if cfg.Client == nil {
		return nil, errors.New("kube nodes: no client")
	}
	if cfg.Self == "" {
		return nil, errors.New("kube nodes: no node name (Self)")
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	n := &Nodes{
		cfg:      cfg,
		log:      cfg.Logger,
		changes:  make(chan struct{}, 1),
		deleted:  make(chan string),
		synced:   make(chan struct{}),
		pending:  make(chan struct{}, 1),
		addrs:    map[string]string{},
		keys:     map[string]string{},
		nextKeys: map[string]string{},
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync, informers.WithTransform(stripNode))
	n.informer = factory.Core().V1().Nodes().Informer()
	_, err := n.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { n.upsert(obj) },
		UpdateFunc: func(_, obj any) { n.upsert(obj) },
		DeleteFunc: n.remove,
	})
	if err != nil {
		return nil, fmt.Errorf("kube nodes: add event handler: %w", err)
	}
	return n, nil
}

// stripNode keeps of a Node only what the watcher reads (name, UID,
// addresses, weft's public key annotation), so the cache stays small in
// clusters with many Nodes.
func stripNode(obj any) (any, error) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // a tombstone; its object was stripped when cached
	}
	meta := metav1.ObjectMeta{Name: node.Name, UID: node.UID, ResourceVersion: node.ResourceVersion}
	for _, a := range []string{AnnotationPublicKey, AnnotationNextPublicKey} {
		if k, ok := node.Annotations[a]; ok {
			if meta.Annotations == nil {
				meta.Annotations = map[string]string{}
			}
			meta.Annotations[a] = k
		}
	}
	return &corev1.Node{ObjectMeta: meta, Status: corev1.NodeStatus{Addresses: node.Status.Addresses}}, nil
}

// PublicKey returns the WireGuard public key the Node's daemon published
// on it (AnnotationPublicKey), if it has: what its gossip must announce.
func (n *Nodes) PublicKey(node string) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	k, ok := n.keys[node]
	return k, ok
}

// NextPublicKey returns the key the Node's daemon rotates to
// (AnnotationNextPublicKey), if a rotation is under way: its gossip may
// announce that one too.
func (n *Nodes) NextPublicKey(node string) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	k, ok := n.nextKeys[node]
	return k, ok
}

// Run runs the informer until ctx is done and returns nil then. It
// returns an error only when called twice.
func (n *Nodes) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.runStarted {
		n.mu.Unlock()
		return errors.New("kube nodes: Run called twice")
	}
	n.runStarted = true
	n.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { n.informer.RunWithContext(ctx) })
	wg.Go(func() { n.pumpDeleted(ctx) })
	if !cache.WaitForCacheSync(ctx.Done(), n.informer.HasSynced) {
		return nil // ctx ended first
	}
	n.log.Info("node list synced", "nodes", len(n.Names()), "seeds", n.Seeds())
	close(n.synced)
	n.notify()
	<-ctx.Done()
	return nil
}

// Synced is closed once the first full list of Nodes is in: from then on
// Seeds and Names are the cluster's. It stays open when Run ends before
// that, so wait on it together with your context.
func (n *Nodes) Synced() <-chan struct{} { return n.synced }

// Seeds returns the address of every other Node (InternalIP, or ExternalIP
// with UseExternalIP), sorted, without duplicates; Nodes with no address
// yet are left out. Addresses have no port: the mesh adds its gossip port.
func (n *Nodes) Seeds() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.seedsLocked()
}

func (n *Nodes) seedsLocked() []string {
	var out []string
	for name, addr := range n.addrs {
		if name != n.cfg.Self && addr != "" {
			out = append(out, addr)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Names returns the names of all Nodes, this one included, sorted.
func (n *Nodes) Names() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Sorted(maps.Keys(n.addrs))
}

// Changes yields a value when Seeds may have changed: after the first sync
// and whenever a Node is added, deleted or changes address. Notifications
// are coalesced (a buffer of one), so a slow reader misses none of the
// state, only intermediate steps: read Seeds after each one.
func (n *Nodes) Changes() <-chan struct{} { return n.changes }

// Deleted yields the name of each Node object deleted while Run runs, in
// order, each once, none dropped however slow the reader. A Node that is
// deleted and re-created is reported for the deletion only. Deletions that
// happened while no daemon watched are not reported; compare the ring's
// owners with Names for those.
func (n *Nodes) Deleted() <-chan string { return n.deleted }

func (n *Nodes) notify() {
	select {
	case n.changes <- struct{}{}:
	default:
	}
}

func (n *Nodes) upsert(obj any) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	addr := nodeAddress(node, n.cfg.UseExternalIP)
	n.mu.Lock()
	old, known := n.addrs[node.Name]
	n.addrs[node.Name] = addr
	if k, ok := node.Annotations[AnnotationPublicKey]; ok {
		n.keys[node.Name] = k
	} else {
		delete(n.keys, node.Name)
	}
	if k, ok := node.Annotations[AnnotationNextPublicKey]; ok {
		n.nextKeys[node.Name] = k
	} else {
		delete(n.nextKeys, node.Name)
	}
	n.mu.Unlock()
	if !known || old != addr {
		n.log.Debug("node seen", "node", node.Name, "addr", addr)
		n.notify()
	}
}

func (n *Nodes) remove(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	node, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	n.mu.Lock()
	delete(n.addrs, node.Name)
	delete(n.keys, node.Name)
	delete(n.nextKeys, node.Name)
	n.deletedQ = append(n.deletedQ, node.Name)
	n.mu.Unlock()
	n.log.Info("node deleted", "node", node.Name)
	select {
	case n.pending <- struct{}{}:
	default:
	}
	n.notify()
}

// pumpDeleted hands queued names to Deleted's reader, so the informer's
// handler never blocks on a slow daemon and no deletion is dropped.
func (n *Nodes) pumpDeleted(ctx context.Context) {
	for {
		n.mu.Lock()
		var next string
		have := len(n.deletedQ) > 0
		if have {
			next = n.deletedQ[0]
		}
		n.mu.Unlock()
		if !have {
			select {
			case <-ctx.Done():
				return
			case <-n.pending:
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case n.deleted <- next:
			n.mu.Lock()
			n.deletedQ = n.deletedQ[1:]
			n.mu.Unlock()
		}
	}
}

// nodeAddress is the address peers should dial a Node at: its ExternalIP
// when external is set and it has one, else its InternalIP, else "".
func nodeAddress(node *corev1.Node, external bool) string {
	var internal, ext string
	for _, a := range node.Status.Addresses {
		switch {
		case a.Type == corev1.NodeInternalIP && internal == "":
			internal = a.Address
		case a.Type == corev1.NodeExternalIP && ext == "":
			ext = a.Address
		}
	}
	if external && ext != "" {
		return ext
	}
	return internal
}
