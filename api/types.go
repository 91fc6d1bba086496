package api

import (
	"net/netip"
	"time"
)

// AllocateWait bounds how long the daemon lets an allocation wait for
// address space (a donation from a peer) before it answers CodeNotReady,
// so the plugin, which waits 5 s for the daemon, always gets an answer it
// can pass on to the runtime as "try again later".
const AllocateWait = 4 * time.Second

// Paths of the daemon's local API. Every request and answer is JSON; errors
// come back as Error with a non-2xx status.
const (
	PathReady       = "/v1/ready"        // GET  -> Ready
	PathCNIAllocate = "/v1/cni/allocate" // POST Attachment -> Allocation (idempotent per key)
	PathCNIRelease  = "/v1/cni/release"  // POST Attachment -> Allocation of what was freed, or 404-free success
	PathCNICheck    = "/v1/cni/check"    // POST Attachment -> Allocation the daemon holds, Error code "unknown" if none
	PathCNIGC       = "/v1/cni/gc"       // POST GCRequest  -> GCResponse
	PathStatus      = "/v1/status"       // GET, and /peers, /ipam, /policy
	PathRmpeer      = "/v1/rmpeer"       // POST {"node": NAME}
	PathPolicyWhy   = "/v1/policy/why"   // POST WhyRequest -> the verdict (daemon.WhyAnswer)
	PathRotateKey   = "/v1/rotate-key"   // POST -> RotateKeyResponse
)

// RotateKeyResponse answers PathRotateKey: the rotation has begun (or was
// under way) and will switch to NextPublicKey once every live peer has it.
type RotateKeyResponse struct {
	NextPublicKey string `json:"nextPublicKey"`
}

// Error codes the CNI plugin branches on.
const (
	CodeFull       = "full"        // the pod range has no free address
	CodeNotReady   = "not-ready"   // the daemon is up but not in the mesh or has no address space yet
	CodeUnknown    = "unknown"     // no allocation for this attachment
	CodeBadRequest = "bad-request" // the request itself is wrong
	CodeInternal   = "internal"
)

// Attachment names one interface of one container: the allocation key.
// Netns and the pod's namespace/name are informational (kept for GC and status).
type Attachment struct {
	ContainerID  string `json:"containerID"`
	IfName       string `json:"ifName"`
	Netns        string `json:"netns,omitempty"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
}

// Allocation is what the plugin configures in the pod.
type Allocation struct {
	Attachment
	Address netip.Prefix `json:"address"` // the pod's address, as a /32
	Gateway netip.Addr   `json:"gateway"` // the link-local next hop the pod routes through
	MTU     int          `json:"mtu"`     // the tunnel MTU, to use for the pod's interface
	PodCIDR netip.Prefix `json:"podCIDR"` // the cluster's whole pod range
	// Dual stack: the pod's IPv6 address (a /128), its IPv6 next hop (a
	// link-local address) and the cluster's IPv6 pod range; all zero, and
	// left out of the JSON, in an IPv4-only cluster.
	Address6 netip.Prefix `json:"address6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	PodCIDR6 netip.Prefix `json:"podCIDR6,omitzero"`
}

// GCRequest lists the attachments the runtime still knows; the daemon frees
// every other allocation.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
}

// GCResponse lists what was freed, so the plugin can remove their links.
type GCResponse struct {
	Released []Allocation `json:"released"`
}

// Ready is the daemon's readiness for pods: in the mesh and with address space.
type Ready struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
}

// WhyRequest asks whether a packet would pass the NetworkPolicies in force
// (`weft why`).
type WhyRequest struct {
	// Src and Dst are each the namespace/name of a pod or an address
	// (of a pod, a node, or outside the cluster, for ipBlock rules).
	Src string `json:"src"`
	Dst string `json:"dst"`
	// Proto is tcp, udp, sctp, icmp, icmpv6 or a protocol number; empty
	// means ICMP (what ping sends; ICMPv6 between IPv6 addresses).
	Proto string `json:"proto,omitempty"`
	// Port is the destination port, 1 to 65535, for TCP, UDP and SCTP
	// only.
	Port uint16 `json:"port,omitempty"`
}
