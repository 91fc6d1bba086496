package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// walkResult is what the rules of a pod's selecting policies say about one
// packet, rule by rule.
type walkResult struct {
	matched []RuleRef // rules that match
	nearest *NearMiss // of the rules that do not, the one that lacks least
	rules   int       // rules looked at
}

// walk goes through the rules of the policies that select the pod for dir,
// in order, and says which match the packet and what the nearest miss
// lacks. It follows the compiler's semantics: the peer of ingress is the
// source, of egress the destination, and named ports resolve on the
// destination pod.
func (e *Explainer) walk(dir Direction, podKey string, policies []string, pkt Packet) walkResult {
	var w walkResult
	peerAddr, dstPod := pkt.Src, e.view().podByKey(podKey)
	if dir == Egress {
		peerAddr, dstPod = pkt.Dst, e.view().podByIP(pkt.Dst)
	}
	peerPod := e.view().podByIP(peerAddr)
	for _, key := range policies {
		pol := e.pols[key]
		if pol == nil {
			continue
		}
		var rules []rulePart
		if dir == Ingress {
			for _, r := range pol.Spec.Ingress {
				rules = append(rules, rulePart{r.From, r.Ports})
			}
		} else {
			for _, r := range pol.Spec.Egress {
				rules = append(rules, rulePart{r.To, r.Ports})
			}
		}
		for i, r := range rules {
			w.rules++
			ref := RuleRef{Policy: key, Rule: i}
			lacks := e.ruleLacks(pol.Namespace, r, peerAddr, peerPod, dstPod, pkt)
			if len(lacks) == 0 {
				w.matched = append(w.matched, ref)
			} else if w.nearest == nil || len(lacks) < len(w.nearest.Lacks) {
				w.nearest = &NearMiss{RuleRef: ref, Lacks: lacks}
			}
		}
	}
	return w
}

// denialDetail is what a denial's reason adds to "no rule matched".
func (w walkResult) denialDetail(dir Direction, policies []string) string {
	switch {
	case len(w.matched) > 0:
		return fmt.Sprintf("; yet %s matches: the rules in force are out of step with the policies (a bug; please report it)",
			w.matched[0].text(dir))
	case w.nearest != nil:
		return fmt.Sprintf("; nearest rule %s: %s", w.nearest.text(dir), strings.Join(w.nearest.Lacks, " and "))
	case len(policies) == 1:
		return fmt.Sprintf("; policy %s has no %s rules", policies[0], dir)
	}
	return fmt.Sprintf("; policies %s have no %s rules", strings.Join(policies, ", "), dir)
}

// rulePart is an ingress or egress rule: its peers and ports.
type rulePart struct {
	peers []networkingv1.NetworkPolicyPeer
	ports []networkingv1.NetworkPolicyPort
}

// ruleLacks says what the packet lacks for the rule to match; nothing when
// it matches. Of several peers, the one that lacks least speaks.
func (e *Explainer) ruleLacks(polNS string, r rulePart, peerAddr netip.Addr, peerPod, dstPod *podInfo, pkt Packet) []string {
	var out []string
	if len(r.peers) > 0 {
		var best []string
		for i, p := range r.peers {
			l := e.peerLacks(polNS, p, peerAddr, peerPod)
			if len(l) == 0 {
				best = nil
				break
			}
			if i == 0 || len(l) < len(best) {
				best = l
			}
		}
		out = append(out, best...)
	}
	if l := portsLack(r.ports, pkt, dstPod); l != "" {
		out = append(out, l)
	}
	return out
}

// peerLacks says why a peer does not match the address (and its pod).
func (e *Explainer) peerLacks(polNS string, p networkingv1.NetworkPolicyPeer, a netip.Addr, pod *podInfo) []string {
	if p.IPBlock != nil {
		return blockLacks(p.IPBlock, a)
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		return []string{"the peer has neither selectors nor ipBlock"}
	}
	if pod == nil {
		return []string{fmt.Sprintf("%s is no pod's address, and the peer selects pods", a)}
	}
	var out []string
	if p.NamespaceSelector == nil {
		if pod.pod.Namespace != polNS {
			out = append(out, fmt.Sprintf("pod %s is not in namespace %s", pod.key, polNS))
		}
	} else {
		out = append(out, selectorLacks("namespace "+pod.pod.Namespace, "namespaceSelector", p.NamespaceSelector,
			e.view().nsLabels[pod.pod.Namespace])...)
	}
	if p.PodSelector != nil {
		out = append(out, selectorLacks("pod "+pod.key, "podSelector", p.PodSelector, pod.labels)...)
	}
	return out
}

// blockLacks says why an ipBlock does not hold the address.
func blockLacks(b *networkingv1.IPBlock, a netip.Addr) []string {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return []string{fmt.Sprintf("ipBlock %q is invalid", b.CIDR)}
	}
	if !prefixRange(unmapPrefix(cidr)).Contains(a) {
		return []string{fmt.Sprintf("%s not in ipBlock %s", a, b.CIDR)}
	}
	for _, x := range b.Except {
		ex, err := netip.ParsePrefix(x)
		if err != nil {
			return []string{fmt.Sprintf("ipBlock %s has an invalid except %q", b.CIDR, x)}
		}
		if prefixRange(unmapPrefix(ex)).Contains(a) {
			return []string{fmt.Sprintf("%s is in ipBlock %s but excepted by %s", a, b.CIDR, x)}
		}
	}
	return nil
}

// selectorLacks names each requirement of the selector that the labels
// fail, e.g. "namespace y lacks label team=blue".
func selectorLacks(subject, what string, s *metav1.LabelSelector, l labels.Set) []string {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return []string{fmt.Sprintf("%s is invalid (%v)", what, err)}
	}
	reqs, _ := sel.Requirements()
	var out []string
	for _, r := range reqs {
		if r.Matches(l) {
			continue
		}
		v, has := l[r.Key()]
		switch {
		case has:
			out = append(out, fmt.Sprintf("%s does not match %s %s (it has %s=%s)", subject, what, r.String(), r.Key(), v))
		case r.Operator() == selection.Exists:
			out = append(out, fmt.Sprintf("%s lacks label %s", subject, r.Key()))
		case r.Values().Len() == 1:
			out = append(out, fmt.Sprintf("%s lacks label %s=%s", subject, r.Key(), r.Values().UnsortedList()[0]))
		default:
			out = append(out, fmt.Sprintf("%s lacks label %s (%s wants %s)", subject, r.Key(), what, r.String()))
		}
	}
	return out
}

// portsLack says why no port entry matches the packet; "" when one does.
func portsLack(ports []networkingv1.NetworkPolicyPort, pkt Packet, dstPod *podInfo) string {
	if len(ports) == 0 {
		return ""
	}
	var names []string
	for _, p := range ports {
		ok, name := portMatches(p, pkt, dstPod)
		if ok {
			return ""
		}
		names = append(names, name)
	}
	what := strings.ToUpper(pkt.Proto.String())
	if pkt.Proto.HasPorts() {
		what = fmt.Sprintf("port %d/%s", pkt.Port, what)
	}
	return fmt.Sprintf("%s not in [%s]", what, strings.Join(names, ", "))
}

// portMatches says whether one port entry matches the packet, and how to
// name the entry, with a named port resolved on the destination pod.
func portMatches(p networkingv1.NetworkPolicyPort, pkt Packet, dstPod *podInfo) (bool, string) {
	proto := ProtoTCP
	if p.Protocol != nil {
		proto = protoOf(*p.Protocol)
		if proto == ProtoAny {
			return false, fmt.Sprintf("%s (unknown protocol)", *p.Protocol)
		}
	}
	protoName := strings.ToUpper(proto.String())
	switch {
	case p.Port == nil:
		return proto == pkt.Proto, protoName + " (any port)"
	case p.Port.Type == intstr.String:
		name := p.Port.StrVal + "/" + protoName
		if dstPod == nil {
			return false, fmt.Sprintf("%s (no pod at %s to name it)", name, pkt.Dst)
		}
		nums := dstPod.namedPort(p.Port.StrVal, proto)
		if len(nums) == 0 {
			return false, fmt.Sprintf("%s (pod %s has no such port)", name, dstPod.key)
		}
		var ns []string
		for _, n := range nums {
			ns = append(ns, fmt.Sprint(n))
		}
		return proto == pkt.Proto && slices.Contains(nums, pkt.Port), fmt.Sprintf("%s (%s on pod %s)", name, strings.Join(ns, ", "), dstPod.key)
	}
	from, to := p.Port.IntVal, p.Port.IntVal
	if p.EndPort != nil {
		to = *p.EndPort
	}
	if from < 0 || to > 65535 || from > to {
		return false, fmt.Sprintf("%d-%d/%s (an empty range)", from, to, protoName)
	}
	r := PortRange{uint16(from), uint16(to)}
	return proto == pkt.Proto && r.Contains(pkt.Port), r.String() + "/" + protoName
}

// podByKey returns the pod namespace/name if it has an address.
func (c *compiler) podByKey(key string) *podInfo {
	for _, p := range c.pods {
		if p.key == key {
			return p
		}
	}
	return nil
}
