package kube

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftnet/weft/policy"
)

// fullPod is a pod as the API serves it, with the fields NetworkPolicy
// reads and many it does not.
func fullPod(r *rand.Rand, i int) *corev1.Pod {
	ns := fmt.Sprintf("ns%d", r.IntN(3))
	ports := func(c int) []corev1.ContainerPort {
		var ps []corev1.ContainerPort
		for j := range r.IntN(3) {
			proto := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, ""}[r.IntN(3)]
			ps = append(ps, corev1.ContainerPort{Name: []string{"http", "dns", "metrics"}[(c+j)%3], ContainerPort: int32(80 + r.IntN(5)), Protocol: proto})
		}
		return ps
	}
	phase := []corev1.PodPhase{corev1.PodRunning, corev1.PodPending, corev1.PodSucceeded}[r.IntN(3)]
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("pod%d", i), Namespace: ns, UID: "uid", ResourceVersion: "7",
			Labels:          map[string]string{"app": []string{"web", "db", "cache"}[r.IntN(3)], "tier": fmt.Sprint(r.IntN(2))},
			Annotations:     map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "x"},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "rs"}},
		},
		Spec: corev1.PodSpec{
			NodeName:    fmt.Sprintf("node%d", r.IntN(2)),
			HostNetwork: r.IntN(8) == 0,
			Containers: []corev1.Container{
				{Name: "main", Image: "registry.example/app:1", Command: []string{"/app"}, Env: []corev1.EnvVar{{Name: "A", Value: "b"}}, Ports: ports(0)},
				{Name: "side", Image: "registry.example/side:1", Ports: ports(1)},
			},
			InitContainers: []corev1.Container{{Name: "init", Image: "registry.example/init:1", Ports: ports(2)}},
			Volumes:        []corev1.Volume{{Name: "v"}},
		},
		Status: corev1.PodStatus{
			Phase: phase, PodIP: fmt.Sprintf("10.32.0.%d", i+1), PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.32.0.%d", i+1)}},
			HostIP:            "172.30.0.2",
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "main", Ready: true, Image: "registry.example/app:1"}},
		},
	}
}

// TestPolicyTransformKeepsWhatPolicyReads: the NetworkPolicy rules a node
// compiles from transformed objects are those it compiles from whole ones,
// on random clusters with named ports, host-network and finished pods.
func TestPolicyTransformKeepsWhatPolicyReads(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var in, stripped policy.Input
		in.NodeName, stripped.NodeName = "node0", "node0"
		for i := range 12 {
			p := fullPod(r, i)
			in.Pods = append(in.Pods, p)
			out, _ := PolicyTransform(p.DeepCopy())
			stripped.Pods = append(stripped.Pods, out.(*corev1.Pod))
		}
		for i := range 3 {
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns%d", i),
				Labels:      map[string]string{"kubernetes.io/metadata.name": fmt.Sprintf("ns%d", i), "env": fmt.Sprint(r.IntN(2))},
				Annotations: map[string]string{"a": "b"}}}
			in.Namespaces = append(in.Namespaces, ns)
			out, _ := PolicyTransform(ns.DeepCopy())
			stripped.Namespaces = append(stripped.Namespaces, out.(*corev1.Namespace))
		}
		for i := range 4 {
			port := intstr.FromString([]string{"http", "dns", "metrics"}[r.IntN(3)])
			if r.IntN(2) == 0 {
				port = intstr.FromInt32(int32(80 + r.IntN(5)))
			}
			pol := &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: fmt.Sprintf("ns%d", r.IntN(3)),
					ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
					Annotations:   map[string]string{corev1.LastAppliedConfigAnnotation: "{...}"}},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": []string{"web", "db"}[r.IntN(2)]}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "1"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
					}},
					Egress: []networkingv1.NetworkPolicyEgressRule{{
						To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "1"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
					}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				},
			}
			in.Policies = append(in.Policies, pol)
			out, _ := PolicyTransform(pol.DeepCopy())
			stripped.Policies = append(stripped.Policies, out.(*networkingv1.NetworkPolicy))
		}
		if want, got := policy.Compile(in), policy.Compile(stripped); !reflect.DeepEqual(want, got) {
			t.Fatalf("round %d: rules from transformed objects differ:\n got %+v\nwant %+v", round, got, want)
		}
	}
}

// TestPolicyTransformDrops: what the cache keeps of a pod is small; what
// the compiler does not read is gone.
func TestPolicyTransformDrops(t *testing.T) {
	p := fullPod(rand.New(rand.NewPCG(3, 4)), 1)
	out, err := PolicyTransform(p.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	s := out.(*corev1.Pod)
	if s.Annotations != nil || s.ManagedFields != nil || s.OwnerReferences != nil || s.Spec.Volumes != nil ||
		s.Status.Conditions != nil || s.Status.ContainerStatuses != nil || s.Status.HostIP != "" {
		t.Errorf("kept fields policy does not read: %+v", s)
	}
	for _, c := range append(s.Spec.Containers, s.Spec.InitContainers...) {
		if c.Image != "" || c.Command != nil || c.Env != nil || len(c.Ports) == 0 {
			t.Errorf("container %+v: want only its name and ports", c)
		}
	}
	if s.Name != p.Name || s.Namespace != p.Namespace || !reflect.DeepEqual(s.Labels, p.Labels) ||
		s.Spec.NodeName != p.Spec.NodeName || s.Status.PodIP != p.Status.PodIP || s.Status.Phase != p.Status.Phase {
		t.Errorf("lost fields policy reads: %+v", s)
	}
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p",
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		Annotations:   map[string]string{corev1.LastAppliedConfigAnnotation: "{}", "keep": "me"}}}
	out, _ = PolicyTransform(pol)
	if got := out.(*networkingv1.NetworkPolicy); got.ManagedFields != nil || !reflect.DeepEqual(got.Annotations, map[string]string{"keep": "me"}) {
		t.Errorf("policy meta after transform: %+v", got.ObjectMeta)
	}
	// A tombstone passes through untouched.
	tomb := "tombstone"
	if out, _ := PolicyTransform(tomb); out != tomb {
		t.Errorf("tombstone changed: %v", out)
	}
}
