package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	networkingv1 "k8s.io/api/networking/v1"
)

// Verdict answers `weft why`: whether a packet passes, which policies
// isolate the pods at each end, the rules that let it pass or, for a
// denial, the rule that came nearest and what it lacked. It is the reason
// the drop log gives for the same packet.
type Verdict struct {
	Src     Endpoint `json:"src"`
	Dst     Endpoint `json:"dst"`
	Proto   Proto    `json:"proto"` // "tcp", "udp", "sctp", "icmp", "icmpv6" or "proto-N"
	Port    uint16   `json:"port"`  // 0 for protocols without ports
	Allowed bool     `json:"allowed"`
	// Reason is the first denying direction's reason, else both
	// allowances: the text the drop log gives.
	Reason  string     `json:"reason"`
	Egress  DirVerdict `json:"egress"`  // at the source
	Ingress DirVerdict `json:"ingress"` // at the destination
}

// Endpoint is one end of the packet.
type Endpoint struct {
	IP   netip.Addr `json:"ip"`
	Pod  string     `json:"pod,omitempty"`  // namespace/name when the address is a pod's
	Node string     `json:"node,omitempty"` // that pod's node
}

// DirVerdict is the verdict of one direction.
type DirVerdict struct {
	Decision DecisionKind `json:"decision"`
	Allowed  bool         `json:"allowed"`
	Pod      string       `json:"pod,omitempty"`  // the pod judged (namespace/name)
	Node     string       `json:"node,omitempty"` // the node whose rules judged
	// Policies select the pod for this direction (namespace/name, sorted);
	// empty: the pod is not isolated.
	Policies []string `json:"policies"`
	// AllowedBy are the rules that match, when a policy allows.
	AllowedBy []RuleRef `json:"allowedBy,omitempty"`
	// Nearest is, for a denial, the rule that came nearest to matching.
	Nearest *NearMiss `json:"nearest,omitempty"`
	// Cluster is the ClusterNetworkPolicy rule that accepted or denied
	// (decision cluster-accepted or cluster-denied) or, otherwise, the
	// Admin rule that passed the packet on.
	Cluster *ClusterRule `json:"cluster,omitempty"`
	Reason  string       `json:"reason"`
}

// RuleRef names one rule: spec.ingress[Rule] or spec.egress[Rule] of a
// policy, by the direction it is found under.
type RuleRef struct {
	Policy string `json:"policy"` // namespace/name
	Rule   int    `json:"rule"`   // index, from 0
}

// NearMiss is the rule that came nearest to allowing a denied packet.
type NearMiss struct {
	RuleRef
	// Lacks says what the packet lacked for the rule to match, e.g.
	// "port 81/TCP not in [80/TCP]", "namespace y lacks label team=blue".
	Lacks []string `json:"lacks"`
}

func (r RuleRef) text(dir Direction) string {
	return fmt.Sprintf("%s %s[%d]", r.Policy, dir, r.Rule)
}

var decisionNames = map[DecisionKind]string{
	NotLocal: "not-local", NotIsolated: "not-isolated", AllowedByPolicy: "allowed",
	AllowedFromNode: "from-node", DefaultDeny: "denied", Loopback: "loopback", NotAPod: "not-a-pod",
	AcceptedByCluster: "cluster-accepted", DeniedByCluster: "cluster-denied",
}

func (k DecisionKind) String() string { return decisionNames[k] }

// MarshalText writes the kind's name: not-local, not-isolated, allowed,
// from-node, denied, loopback, not-a-pod, cluster-accepted or
// cluster-denied.
func (k DecisionKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (k *DecisionKind) UnmarshalText(b []byte) error {
	for kind, n := range decisionNames {
		if n == string(b) {
			*k = kind
			return nil
		}
	}
	return fmt.Errorf("decision %q is unknown", b)
}

// Explainer answers why for one node's view: the objects it compiled and
// the rule set it compiled from them. It is read-only once made and safe
// for concurrent use.
type Explainer struct {
	in    Input
	rules RuleSet
	pols  map[string]*networkingv1.NetworkPolicy

	// The pods and namespace labels of in, indexed on the first question:
	// the daemon makes an Explainer on every change of the rules, and
	// most are never asked. Never mutated once made.
	viewOnce sync.Once
	viewC    *compiler

	mu     sync.Mutex
	others map[string]*Explainer // other nodes' views, compiled on demand
}

// NewExplainer explains with rules, which must be Compile(in).
func NewExplainer(in Input, rules RuleSet) *Explainer {
	e := &Explainer{in: in, rules: rules, pols: map[string]*networkingv1.NetworkPolicy{}}
	for _, p := range in.Policies {
		if p != nil {
			e.pols[p.Namespace+"/"+p.Name] = p
		}
	}
	return e
}

// view returns the index of pods and namespace labels, made once.
func (e *Explainer) view() *compiler {
	e.viewOnce.Do(func() { e.viewC = newCompiler(e.in) })
	return e.viewC
}

// Node is the node whose view this is.
func (e *Explainer) Node() string { return e.in.NodeName }

// ExplainDrop is the reason the drop log gives for a packet this node
// dropped.
func (e *Explainer) ExplainDrop(pkt Packet) string { return e.Why(pkt).Reason }

// Why judges pkt with this node's rules only, as its kernel does: the
// egress of a local source and the ingress of a local destination; a side
// on another node is NotLocal.
func (e *Explainer) Why(pkt Packet) Verdict {
	ok, r := e.rules.Allows(pkt)
	v := Verdict{Src: e.endpoint(pkt.Src), Dst: e.endpoint(pkt.Dst), Proto: pkt.Proto, Port: pkt.Port, Allowed: ok}
	v.Egress = e.dirVerdict(Egress, r.Egress, pkt)
	v.Ingress = e.dirVerdict(Ingress, r.Ingress, pkt)
	v.Reason = reasonOf(v.Egress, v.Ingress)
	return v
}

// WhyCluster judges pkt as the cluster does: egress with the rules of the
// source pod's node, ingress with those of the destination pod's node,
// each compiled from this view's objects (every node sees all pods and
// policies). nodeAddrs gives another node's own addresses (traffic from
// them to its pods is allowed); the host addresses of its pods are added.
// nodeAddrs may be nil.
func (e *Explainer) WhyCluster(pkt Packet, nodeAddrs func(node string) []netip.Addr) Verdict {
	src, dst := e.view().podByIP(pkt.Src), e.view().podByIP(pkt.Dst)
	egress, ingress := e, e
	if src != nil && src.pod.Spec.NodeName != e.in.NodeName {
		egress = e.other(src.pod.Spec.NodeName, nodeAddrs)
	}
	if dst != nil && dst.pod.Spec.NodeName != e.in.NodeName {
		ingress = e.other(dst.pod.Spec.NodeName, nodeAddrs)
	}
	v := egress.Why(pkt)
	v.Ingress = ingress.Why(pkt).Ingress
	for _, d := range []*DirVerdict{&v.Egress, &v.Ingress} {
		if d.Decision == NotLocal {
			*d = DirVerdict{Decision: NotAPod, Allowed: true, Policies: []string{}}
		}
	}
	if v.Egress.Decision == NotAPod {
		v.Egress.Reason = fmt.Sprintf("egress: %s is no pod's address; no policy judges it", pkt.Src)
	}
	if v.Ingress.Decision == NotAPod {
		v.Ingress.Reason = fmt.Sprintf("ingress: %s is no pod's address; no policy judges it", pkt.Dst)
	}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	v.Reason = reasonOf(v.Egress, v.Ingress)
	return v
}

// other returns the view of another node, compiled once.
func (e *Explainer) other(node string, nodeAddrs func(string) []netip.Addr) *Explainer {
	e.mu.Lock()
	defer e.mu.Unlock()
	if o := e.others[node]; o != nil {
		return o
	}
	in := e.in
	in.NodeName = node
	in.NodeAddrs = nil
	if nodeAddrs != nil {
		in.NodeAddrs = nodeAddrs(node)
	}
	for _, p := range e.view().pods {
		if p.pod.Spec.NodeName != node {
			continue
		}
		for _, h := range p.pod.Status.HostIPs {
			if a, err := netip.ParseAddr(h.IP); err == nil {
				in.NodeAddrs = append(in.NodeAddrs, a.Unmap())
			}
		}
	}
	o := NewExplainer(in, Compile(in))
	if e.others == nil {
		e.others = map[string]*Explainer{}
	}
	e.others[node] = o
	return o
}

// Resolve turns the SRC and DST of `weft why` into addresses: each is the
// namespace/name of a pod or an address. Of a pod with addresses of both
// families, the one of the other end's family is taken.
func (e *Explainer) Resolve(src, dst string) (netip.Addr, netip.Addr, error) {
	s, err := e.candidates(src)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("source: %w", err)
	}
	d, err := e.candidates(dst)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("destination: %w", err)
	}
	for _, a := range s {
		for _, b := range d {
			if a.BitLen() == b.BitLen() {
				return a, b, nil
			}
		}
	}
	return netip.Addr{}, netip.Addr{}, fmt.Errorf("%s (%v) and %s (%v) have no address family in common", src, s, dst, d)
}

func (e *Explainer) candidates(s string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("%q is neither an address nor namespace/name of a pod", s)
	}
	for _, p := range e.view().pods {
		if p.pod.Namespace == ns && p.pod.Name == name {
			return p.ips, nil
		}
	}
	for _, p := range e.in.Pods {
		if p != nil && p.Namespace == ns && p.Name == name {
			return nil, fmt.Errorf("pod %s has no address NetworkPolicy applies to (phase %s, hostNetwork %v)",
				s, p.Status.Phase, p.Spec.HostNetwork)
		}
	}
	return nil, fmt.Errorf("there is no pod %s (in this node's view of the cluster)", s)
}

func (e *Explainer) endpoint(a netip.Addr) Endpoint {
	ep := Endpoint{IP: a}
	if p := e.view().podByIP(a); p != nil {
		ep.Pod, ep.Node = p.key, p.pod.Spec.NodeName
	}
	return ep
}

// dirVerdict completes one direction's decision with the rules behind it.
func (e *Explainer) dirVerdict(dir Direction, d Decision, pkt Packet) DirVerdict {
	dv := DirVerdict{Decision: d.Kind, Allowed: d.Allowed(), Pod: d.Pod, Policies: []string{}, Cluster: d.Cluster}
	if d.Kind == NotLocal {
		dv.Reason = d.describe(dir)
		return dv
	}
	dv.Node = e.in.NodeName
	if pr := e.rules.podByKey(d.Pod); pr != nil {
		dv.Policies = slices.Clone(pr.Dir(dir).Policies)
		if dv.Policies == nil {
			dv.Policies = []string{}
		}
	}
	switch d.Kind {
	case AllowedByPolicy:
		w := e.walk(dir, d.Pod, dv.Policies, pkt)
		dv.AllowedBy = w.matched
		dv.Reason = d.describe(dir)
		if len(w.matched) > 0 {
			refs := make([]string, len(w.matched))
			for i, r := range w.matched {
				refs[i] = r.text(dir)
			}
			dv.Reason = fmt.Sprintf("%s of pod %s allowed by %s", dir, d.Pod, strings.Join(refs, ", "))
		}
	case DefaultDeny:
		w := e.walk(dir, d.Pod, dv.Policies, pkt)
		dv.Nearest = w.nearest
		dv.Reason = d.describe(dir) + w.denialDetail(dir, dv.Policies)
	default:
		dv.Reason = d.describe(dir)
	}
	return dv
}

// reasonOf says why: the first denying direction, else both allowances.
func reasonOf(egress, ingress DirVerdict) string {
	if !egress.Allowed {
		return egress.Reason
	}
	if !ingress.Allowed {
		return ingress.Reason
	}
	return egress.Reason + "; " + ingress.Reason
}

func (rs RuleSet) podByKey(key string) *PodRules {
	for i := range rs.Pods {
		if rs.Pods[i].Key() == key {
			return &rs.Pods[i]
		}
	}
	return nil
}

// podByIP returns the pod (with an IP, not hostNetwork, not terminated)
// that owns a.
func (c *compiler) podByIP(a netip.Addr) *podInfo {
	for _, p := range c.pods {
		if slices.Contains(p.ips, a) {
			return p
		}
	}
	return nil
}
