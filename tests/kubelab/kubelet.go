package kubelab

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PauseImage is the image of the one container of every Pod CreatePod
// makes; nothing pulls it, since no kubelet runs.
const PauseImage = "registry.k8s.io/pause:3.10"

// CreateNode registers a Node as a kubelet would: status addresses
// InternalIP and Hostname, and a Ready condition.
func (c *Cluster) CreateNode(ctx context.Context, name string, internalIP netip.Addr) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{corev1.LabelHostname: name, corev1.LabelOSStable: "linux"},
		},
	}
	created, err := c.clientset.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	now := metav1.Now()
	created.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: internalIP.String()},
			{Type: corev1.NodeHostName, Address: name},
		},
		Conditions: []corev1.NodeCondition{{
			Type:               corev1.NodeReady,
			Status:             corev1.ConditionTrue,
			Reason:             "KubeletReady",
			Message:            "kubelab plays the kubelet",
			LastHeartbeatTime:  now,
			LastTransitionTime: now,
		}},
		NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64"},
	}
	if _, err := c.clientset.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write status of node %s: %w", name, err)
	}
	return nil
}

// DeleteNode deletes a Node; a missing one is not an error.
func (c *Cluster) DeleteNode(ctx context.Context, name string) error {
	err := c.clientset.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	return nil
}

// PodSpec is what CreatePod needs to know of a Pod.
type PodSpec struct {
	Namespace string // default "default"
	Name      string
	NodeName  string // spec.nodeName, as if scheduled
	Labels    map[string]string
	Ports     []corev1.ContainerPort
}

// CreatePod creates a Pod with one pause container, already bound to
// NodeName, and its namespace if missing. The Pod stays Pending with no IP
// until SetPodIPs.
func (c *Cluster) CreatePod(ctx context.Context, spec PodSpec) (*corev1.Pod, error) {
	if spec.Namespace == "" {
		spec.Namespace = metav1.NamespaceDefault
	}
	if err := c.EnsureNamespace(ctx, spec.Namespace); err != nil {
		return nil, err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: spec.Namespace, Name: spec.Name, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName:                      spec.NodeName,
			AutomountServiceAccountToken:  new(false),
			TerminationGracePeriodSeconds: new(int64(0)),
			Containers: []corev1.Container{{
				Name:  "pause",
				Image: PauseImage,
				Ports: spec.Ports,
			}},
		},
	}
	created, err := c.clientset.CoreV1().Pods(spec.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	return created, nil
}

// EnsureNamespace creates the namespace unless it exists.
func (c *Cluster) EnsureNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	_, err := c.clientset.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// SetPodIPs writes what the kubelet reports once the sandbox runs: the pod
// IPs (at most one per family, the first is status.podIP), phase Running,
// Ready conditions, and the host IP of the Pod's Node when it has an
// InternalIP.
func (c *Cluster) SetPodIPs(ctx context.Context, namespace, name string, ips ...netip.Addr) error {
	pods := c.clientset.CoreV1().Pods(namespace)
	pod, err := pods.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	now := metav1.Now()
	st := &pod.Status
	st.Phase = corev1.PodRunning
	st.PodIP, st.PodIPs = "", nil
	for i, ip := range ips {
		if i == 0 {
			st.PodIP = ip.String()
		}
		st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	st.Conditions = nil
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	st.ContainerStatuses = []corev1.ContainerStatus{{
		Name:    "pause",
		Image:   PauseImage,
		ImageID: PauseImage,
		Ready:   true,
		Started: new(true),
		State:   corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
	}}
	if hostIP, ok := c.nodeInternalIP(ctx, pod.Spec.NodeName); ok {
		st.HostIP, st.HostIPs = hostIP, []corev1.HostIP{{IP: hostIP}}
	}
	if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write status of pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

func (c *Cluster) nodeInternalIP(ctx context.Context, nodeName string) (string, bool) {
	if nodeName == "" {
		return "", false
	}
	node, err := c.clientset.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return "", false
	}
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address, true
		}
	}
	return "", false
}

// DeletePod deletes a Pod at once (grace period 0, as a kubelet confirming
// the containers are gone); a missing one is not an error.
func (c *Cluster) DeletePod(ctx context.Context, namespace, name string) error {
	err := c.clientset.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}
