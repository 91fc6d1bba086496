package daemon

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/policy"
)

var (
	descEnforcing    = prometheus.NewDesc("weft_policy_enforcing", "1 when this node enforces NetworkPolicy (it needs Kubernetes).", nil, nil)
	descPolicies     = prometheus.NewDesc("weft_policy_policies", "NetworkPolicies in force on this node: those that select at least one of its pods.", nil, nil)
	descIsolated     = prometheus.NewDesc("weft_policy_isolated_pods", "Pods of this node isolated by at least one NetworkPolicy, by direction.", []string{"direction"}, nil)
	descAllowEntries = prometheus.NewDesc("weft_policy_allow_entries", "Allow entries (peer and port, merged) in the nftables rules of this node's pods, by direction.", []string{"direction"}, nil)
	descRuleWrites   = prometheus.NewDesc("weft_policy_rule_writes_total", "Batches of NetworkPolicy rules written to nftables (a change of the rules, or a repair of drift).", nil, nil)
	descLastChange   = prometheus.NewDesc("weft_policy_last_change_timestamp_seconds", "Unix time the NetworkPolicy rules in the kernel last changed.", nil, nil)
	descDroppedPkts  = prometheus.NewDesc("weft_policy_dropped_packets_total", "Packets NetworkPolicy dropped, per pod of this node and direction.", []string{"namespace", "pod", "direction"}, nil)
	descDroppedBytes = prometheus.NewDesc("weft_policy_dropped_bytes_total", "Bytes NetworkPolicy dropped, per pod of this node and direction.", []string{"namespace", "pod", "direction"}, nil)
	policyDirections = []policy.Direction{policy.Ingress, policy.Egress}
	policyDescs      = []*prometheus.Desc{descEnforcing, descPolicies, descIsolated, descAllowEntries, descRuleWrites, descLastChange, descDroppedPkts, descDroppedBytes}
)

// policyState is what the policy metrics read, taken at scrape time.
type policyState struct {
	Enforcing bool
	Summary   policy.Summary
	Writes    uint64
	Changed   time.Time // zero: never
	// Drops are the kernel's drop counters; nil when they could not be read.
	Drops []policy.DropCount
}

func (a *agent) policyState() policyState {
	a.mu.Lock()
	applier, rs, changed := a.applier, a.ruleSet, a.policyApplied
	a.mu.Unlock()
	if applier == nil {
		return policyState{}
	}
	st := policyState{Enforcing: true, Summary: rs.Summary(), Writes: applier.Writes(), Changed: changed}
	drops, err := applier.Drops()
	if err != nil {
		a.log.Debug("metrics: read NetworkPolicy drop counters", "err", err)
	}
	st.Drops = drops
	return st
}

// collectPolicy reports the NetworkPolicy rules in force and what they
// dropped. Drops are per local pod: the label set grows with the pods of
// one node, never with the cluster.
func collectPolicy(e emit, st policyState) {
	e(descEnforcing, prometheus.GaugeValue, b2f(st.Enforcing))
	if !st.Enforcing {
		return
	}
	e(descPolicies, prometheus.GaugeValue, float64(len(st.Summary.Policies)))
	isolated := map[policy.Direction]int{}
	entries := map[policy.Direction]int{}
	for _, p := range st.Summary.Pods {
		if len(p.Ingress) > 0 {
			isolated[policy.Ingress]++
		}
		if len(p.Egress) > 0 {
			isolated[policy.Egress]++
		}
		entries[policy.Ingress] += p.IngressEntries
		entries[policy.Egress] += p.EgressEntries
	}
	for _, d := range policyDirections {
		e(descIsolated, prometheus.GaugeValue, float64(isolated[d]), d.String())
		e(descAllowEntries, prometheus.GaugeValue, float64(entries[d]), d.String())
	}
	e(descRuleWrites, prometheus.CounterValue, float64(st.Writes))
	if !st.Changed.IsZero() {
		e(descLastChange, prometheus.GaugeValue, float64(st.Changed.UnixNano())/1e9)
	}
	// Counters are kept per pod address: a pod replaced by one of the same
	// name (a StatefulSet's) may have two for a moment, summed here.
	type key struct {
		ns, pod string
		dir     policy.Direction
	}
	var order []key
	sums := map[key]*policy.DropCount{}
	for _, d := range st.Drops {
		k := key{d.Namespace, d.Name, d.Direction}
		if s := sums[k]; s != nil {
			s.Packets += d.Packets
			s.Bytes += d.Bytes
			continue
		}
		sums[k] = &d
		order = append(order, k)
	}
	for _, k := range order {
		d := sums[k]
		e(descDroppedPkts, prometheus.CounterValue, float64(d.Packets), k.ns, k.pod, k.dir.String())
		e(descDroppedBytes, prometheus.CounterValue, float64(d.Bytes), k.ns, k.pod, k.dir.String())
	}
}
