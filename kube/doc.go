// Package kube is weft's side of the Kubernetes API: the client
// (NewClient), a Node watcher that gives the mesh its seeds and tells of
// deleted Nodes (Nodes), the daemon's few writes to its own Node
// (PublishNode, SetNetworkAvailable), and the cluster-wide objects that must
// exist exactly once, each made by create-if-absent so that the first writer
// wins and every other daemon adopts its value:
//
//	kube-system/Secret weft                   EnsureSecret   the cluster secret
//	kube-system/ConfigMap weft-ipam-genesis   EnsureGenesis  pod CIDR and seed list of the ring
//	weft-system/Lease weft-reclaim-<node>     ClaimReclaim   who reclaims a deleted Node's ranges
//
// How the daemon uses it, in order:
//
//	client, _, err := NewClient(cfg.Kubeconfig)       // ErrNoKubernetes: run without
//	secret, err := EnsureSecret(ctx, client, "")       // unless --secret-file is given
//	seed, err := EnsureGenesis(ctx, client, podCIDR, []string{self}) // ipalloc.Config.Seed
//	nodes, err := NewNodes(NodesConfig{Client: client, Self: self})  // Run; Seeds on Changes
//	reclaimer, err := NewReclaimer(ReclaimerConfig{..., Reclaim: rmpeer}) // Run
//	PublishNode(...); SetNetworkAvailable(...)         // once up, and on every resync
//
// Only kube and daemon import client-go; the other packages take plain data.
package kube

import "time"

// Namespace is where weft keeps the objects that must outlive an
// uninstall: the cluster secret and the IPAM genesis.
const Namespace = "kube-system"

// LeaseNamespace is weft's own namespace (deploy/weft.yaml creates it),
// which holds the reclaim claims and nothing else. A namespace of its own
// because RBAC cannot limit create to names: there, rights on every Lease
// touch no Lease that is not weft's, such as the leader elections of the
// scheduler and the controller manager in kube-system.
const LeaseNamespace = "weft-system"

// Annotations PublishNode writes on the daemon's own Node, for people and
// tools to read; the public key also pins what that node's gossip may
// announce (a peer whose gossiped key differs gets no tunnel).
const (
	AnnotationPublicKey = "weft.dev/public-key"
	// AnnotationNextPublicKey is the key a node rotates to while a key
	// rotation is under way: peers accept it as well as the pinned one.
	AnnotationNextPublicKey = "weft.dev/next-public-key"
	AnnotationEndpoint      = "weft.dev/endpoint"
	AnnotationTunnelAddr    = "weft.dev/tunnel-address"
	AnnotationTunnelAddr6   = "weft.dev/tunnel-address6" // dual stack
	fieldManager            = "weft"
	defaultRequestTimeout   = 30 * time.Second
)
