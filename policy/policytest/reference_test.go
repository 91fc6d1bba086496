package policytest

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func pod(ns, name, node, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

// TestReference checks that the cluster's answer needs both ends: the
// source node's egress and the destination node's ingress.
func TestReference(t *testing.T) {
	a, b := pod("x", "a", "n1", "10.32.0.1"), pod("x", "b", "n2", "10.32.1.1")
	pods := []*corev1.Pod{a, b}
	denyIngressB := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny-b"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}}},
	}
	denyEgressA := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		},
	}
	ab := Packet{Src: netip.MustParseAddr("10.32.0.1"), Dst: netip.MustParseAddr("10.32.1.1"), Proto: corev1.ProtocolTCP, Port: 80}
	ba := Packet{Src: ab.Dst, Dst: ab.Src, Proto: corev1.ProtocolTCP, Port: 80}
	aa := Packet{Src: ab.Src, Dst: ab.Src, Proto: corev1.ProtocolUDP, Port: 81}
	tests := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		pkt      Packet
		want     bool
	}{
		{"no policy", nil, ab, true},
		{"ingress of the destination denies", []*networkingv1.NetworkPolicy{denyIngressB}, ab, false},
		{"ingress of another pod does not", []*networkingv1.NetworkPolicy{denyIngressB}, ba, true},
		{"egress of the source denies", []*networkingv1.NetworkPolicy{denyEgressA}, ab, false},
		{"egress of the destination does not", []*networkingv1.NetworkPolicy{denyEgressA}, ba, true},
		{"a pod reaches itself", []*networkingv1.NetworkPolicy{denyEgressA, denyIngressB}, aa, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Reference(pods, nil, tt.policies, tt.pkt); got != tt.want {
				t.Errorf("Reference(%v) = %v, want %v", tt.pkt, got, tt.want)
			}
			// Each node alone sees only its own end.
			if tt.want {
				return
			}
			for _, node := range []string{"n1", "n2"} {
				if !Allows(Input{NodeName: node, Pods: pods, Policies: tt.policies}, tt.pkt) {
					return
				}
			}
			t.Errorf("no node denies %v", tt.pkt)
		})
	}
}

func TestSelectorMatches(t *testing.T) {
	l := map[string]string{"pod": "a", "tier": "web"}
	tests := []struct {
		name string
		sel  metav1.LabelSelector
		want bool
	}{
		{"empty", metav1.LabelSelector{}, true},
		{"labels", metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}}, true},
		{"labels differ", metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}}, false},
		{"in", expr("pod", metav1.LabelSelectorOpIn, "a", "b"), true},
		{"not in", expr("pod", metav1.LabelSelectorOpNotIn, "a"), false},
		{"not in, key absent", expr("ns", metav1.LabelSelectorOpNotIn, "a"), true},
		{"exists", expr("tier", metav1.LabelSelectorOpExists), true},
		{"does not exist", expr("tier", metav1.LabelSelectorOpDoesNotExist), false},
		{"unknown operator", expr("pod", "Like", "a"), false},
	}
	for _, tt := range tests {
		if got := SelectorMatches(&tt.sel, l); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func expr(key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelector {
	return metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}
