package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// NodeInfo is what a daemon publishes on its own Node.
type NodeInfo struct {
	PublicKey  string // WireGuard public key, base64
	Endpoint   string // host:port peers dial for WireGuard
	TunnelAddr string // this node's address on the overlay; "" while it has none
	// TunnelAddr6 is its IPv6 address on the overlay in a dual-stack
	// cluster; "" otherwise.
	TunnelAddr6 string
	// NextPublicKey is the key of a rotation under way; "" when none.
	NextPublicKey string
}

// PublishNode writes info as annotations of the Node nodeName
// (AnnotationPublicKey, AnnotationEndpoint, AnnotationTunnelAddr) with a
// JSON merge patch that touches nothing else; an empty field removes its
// annotation. Writing the same info again changes nothing.
func PublishNode(ctx context.Context, client kubernetes.Interface, nodeName string, info NodeInfo) error {
	annotations := map[string]any{}
	for key, v := range map[string]string{
		AnnotationPublicKey:     info.PublicKey,
		AnnotationEndpoint:      info.Endpoint,
		AnnotationTunnelAddr:    info.TunnelAddr,
		AnnotationTunnelAddr6:   info.TunnelAddr6,
		AnnotationNextPublicKey: info.NextPublicKey,
	} {
		if v == "" {
			annotations[key] = nil // merge patch: remove
		} else {
			annotations[key] = v
		}
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return fmt.Errorf("encode annotations of node %s: %w", nodeName, err)
	}
	_, err = client.CoreV1().Nodes().Patch(ctx, nodeName, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if err != nil {
		return fmt.Errorf("annotate node %s with weft's key and endpoint (RBAC: nodes patch): %w", nodeName, err)
	}
	return nil
}

// Reason and message of the NetworkUnavailable condition SetNetworkAvailable
// writes.
const (
	ReasonWeftIsUp  = "WeftIsUp"
	messageWeftIsUp = "weft is running on this node: tunnel and routes are up"
)

// SetNetworkAvailable sets the NetworkUnavailable condition of the Node
// nodeName to False with reason WeftIsUp, through the status subresource,
// with a strategic merge patch of that one condition (the list is merged
// by type, the kubelet's conditions stay). When the condition already says
// so it writes nothing, so calling it on every reconcile is cheap and
// lastTransitionTime keeps the time of the real transition.
func SetNetworkAvailable(ctx context.Context, client kubernetes.Interface, nodeName string) error {
	node, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read node %s: %w", nodeName, err)
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == ReasonWeftIsUp {
			return nil
		}
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	cond := corev1.NodeCondition{
		Type:               corev1.NodeNetworkUnavailable,
		Status:             corev1.ConditionFalse,
		Reason:             ReasonWeftIsUp,
		Message:            messageWeftIsUp,
		LastTransitionTime: now,
		LastHeartbeatTime:  now,
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return fmt.Errorf("encode condition of node %s: %w", nodeName, err)
	}
	_, err = client.CoreV1().Nodes().Patch(ctx, nodeName, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: fieldManager}, "status")
	if err != nil {
		return fmt.Errorf("set NetworkUnavailable=False on node %s (RBAC: nodes/status patch): %w", nodeName, err)
	}
	return nil
}
