// Package policy enforces Kubernetes NetworkPolicy (networking.k8s.io/v1)
// for the pods of one node.
//
// It has two halves:
//
//   - [Compile] is pure: from Pods, Namespaces and NetworkPolicies (plain
//     k8s.io/api values, no client-go) it computes a [RuleSet] for the pods
//     on this node. A RuleSet can be evaluated in Go ([RuleSet.Allows]), which
//     is how it is tested against a slow reference evaluator, and explains its
//     verdicts ([Reason]).
//   - [Explainer] answers `weft why` from the same objects and rule set:
//     whether a packet passes, which policies isolate each end, the rule
//     that allowed it or, for a denial, the nearest rule and what it lacked.
//     The drop log gives the same text ([Explainer.ExplainDrop]).
//   - [Applier] renders a RuleSet into weft's nftables table (inet weft)
//     through netlink and applies it in one atomic batch.
//
// Semantics, as in the Kubernetes documentation:
//
//   - A pod is isolated for ingress (egress) when at least one policy selects
//     it for that direction; isolated traffic is allowed only when some rule of
//     some selecting policy allows it (policies are a union). A pod selected by
//     no policy for a direction is allowed everything in that direction.
//   - policyTypes defaults to Ingress, plus Egress when the policy has egress
//     rules.
//   - Replies of allowed connections pass (conntrack established/related).
//   - Traffic from this node's own addresses ([Input].NodeAddrs) to its pods is
//     always allowed, so that kubelet probes work, as every implementation
//     does.
//   - Only pods with an IP are peers or targets; hostNetwork pods and pods that
//     have terminated (phase Succeeded or Failed) are neither (their address
//     belongs to the node or may be reused). ipBlock peers match by address,
//     so they match pod and node addresses inside the block too.
//   - Named ports resolve on the destination pod: for ingress the selected
//     (local) pod, for egress the pod that owns the destination address,
//     whichever peer (pod selector or ipBlock) admitted it. An address that
//     belongs to no known pod has no named ports.
//   - Per packet, the kernel does a constant number of set lookups: the cost
//     does not grow with the number of policies or peers.
package policy
