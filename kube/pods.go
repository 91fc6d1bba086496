package kube

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PolicyTransform is the informer transform (informers.WithTransform) of
// the Pods, Namespaces and NetworkPolicies a daemon watches for
// NetworkPolicy: it keeps of each object only what the policy compiler
// reads, so that the cache of a cluster of thousands of pods stays small.
func PolicyTransform(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return stripPod(o), nil
	case *corev1.Namespace:
		return stripNamespace(o), nil
	}
	return stripManagedFields(obj), nil
}

// stripPod keeps of a Pod only what NetworkPolicy needs: name, namespace,
// labels, node, host network, phase, addresses and the containers' ports
// (named ports). On a
// large cluster every daemon caches every Pod (a policy's peers may run on
// any node), and the rest of a Pod (managed fields, annotations, the
// containers' images, commands, environment, volumes, probes, conditions,
// container statuses) is most of its size.
func stripPod(pod *corev1.Pod) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			Labels: pod.Labels, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName: pod.Spec.NodeName, HostNetwork: pod.Spec.HostNetwork,
			Containers:     containerPorts(pod.Spec.Containers),
			InitContainers: containerPorts(pod.Spec.InitContainers),
		},
		Status: corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP, PodIPs: pod.Status.PodIPs},
	}
}

// containerPorts keeps the name and ports of the containers that have
// ports (a named port of a NetworkPolicy resolves against them).
func containerPorts(cs []corev1.Container) []corev1.Container {
	var out []corev1.Container
	for _, c := range cs {
		if len(c.Ports) > 0 {
			out = append(out, corev1.Container{Name: c.Name, Ports: c.Ports})
		}
	}
	return out
}

// stripNamespace keeps of a Namespace its
// name and labels, all NetworkPolicy selects namespaces by.
func stripNamespace(ns *corev1.Namespace) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns.Name, UID: ns.UID, ResourceVersion: ns.ResourceVersion, Labels: ns.Labels,
	}}
}

// stripManagedFields drops the managed
// fields (server-side apply's bookkeeping, often the larger part of a small
// object) and the last-applied annotation of kubectl apply.
func stripManagedFields(obj any) any {
	if m, ok := obj.(metav1.ObjectMetaAccessor); ok {
		meta := m.GetObjectMeta()
		meta.SetManagedFields(nil)
		if a := meta.GetAnnotations(); a[corev1.LastAppliedConfigAnnotation] != "" {
			c := make(map[string]string, len(a))
			for k, v := range a {
				if k != corev1.LastAppliedConfigAnnotation {
					c[k] = v
				}
			}
			meta.SetAnnotations(c)
		}
	}
	return obj
}
