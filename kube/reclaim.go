package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Reclaim claims are coordination.k8s.io Leases in weft-system, one per
// deleted Node, named weft-reclaim-<node>. A Lease rather than a ConfigMap
// because it says what it is: who holds it (spec.holderIdentity) since when
// (spec.acquireTime), and RBAC can grant leases without configmaps or
// secrets. They live in weft's own namespace (LeaseNamespace), since
// create cannot be limited by name and delete must touch no other Lease.
// Nobody renews them; they are records of one decision.
//
// Life of a claim:
//
//	Node X deleted ──► every daemon: ClaimReclaim(X) ──► one Create wins ──► winner: Rmpeer X
//	                                                 └─► others: AlreadyExists, lost
//	X registers again ──► X's daemon at start: ReleaseReclaim(X) deletes the old claim,
//	                      so a later deletion of X is reclaimed again
//	claim older than a day ──► PruneReclaims (any daemon, periodically) deletes it
const (
	reclaimPrefix      = "weft-reclaim-"
	labelComponent     = "app.kubernetes.io/component"
	componentReclaim   = "reclaim"
	annotationReclaim  = "weft.dev/node"
	maxObjectNameLen   = 253
	DefaultReclaimTTL  = 24 * time.Hour
	labelName          = "app.kubernetes.io/name"
	labelNameValueWeft = "weft"
)

// ErrNodeExists is returned by ClaimReclaim when a Node of that name exists
// (again): its ranges belong to a live node and must not be reclaimed.
var ErrNodeExists = errors.New("a Node of that name exists: not reclaiming a live node's ranges")

// ReclaimLeaseName is the name of the claim on deadNode's ranges.
func ReclaimLeaseName(deadNode string) string {
	name := reclaimPrefix + deadNode
	if len(name) > maxObjectNameLen {
		sum := sha256.Sum256([]byte(deadNode))
		name = reclaimPrefix + hex.EncodeToString(sum[:16])
	}
	return name
}

// ClaimReclaim decides which live node reclaims the address ranges of the
// deleted Node deadNode: it creates the Lease weft-reclaim-<deadNode> held
// by self, and only one create can succeed however many daemons race. It
// returns true to the node that holds the claim (also when self already
// held it, so a retry is safe) and false to every other; only the winner
// calls ipalloc's Rmpeer. It refuses to claim self and, with ErrNodeExists,
// a node whose Node object exists.
func ClaimReclaim(ctx context.Context, client kubernetes.Interface, deadNode, self string) (bool, error) {
	if deadNode == "" || self == "" {
		return false, errors.New("claim reclaim: empty node name")
	}
	if deadNode == self {
		return false, fmt.Errorf("claim reclaim of %s: a node does not reclaim its own ranges", self)
	}
	_, err := client.CoreV1().Nodes().Get(ctx, deadNode, metav1.GetOptions{})
	switch {
	case err == nil:
		return false, fmt.Errorf("claim reclaim of %s: %w", deadNode, ErrNodeExists)
	case !apierrors.IsNotFound(err):
		return false, fmt.Errorf("claim reclaim of %s: check its Node is gone: %w", deadNode, err)
	}
	leases := client.CoordinationV1().Leases(LeaseNamespace)
	name := ReclaimLeaseName(deadNode)
	now := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   LeaseNamespace,
			Labels:      map[string]string{labelName: labelNameValueWeft, labelComponent: componentReclaim},
			Annotations: map[string]string{annotationReclaim: deadNode},
		},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &self, AcquireTime: &now},
	}
	_, err = leases.Create(ctx, lease, metav1.CreateOptions{FieldManager: fieldManager})
	if err == nil {
		return true, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return false, fmt.Errorf("claim reclaim of %s: create Lease %s/%s%s: %w", deadNode, LeaseNamespace, name, leaseHint(err, "create"), err)
	}
	got, err := leases.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("claim reclaim of %s: read Lease %s/%s: %w", deadNode, LeaseNamespace, name, err)
	}
	return got.Spec.HolderIdentity != nil && *got.Spec.HolderIdentity == self, nil
}

// ReclaimHolder returns the node that holds the claim on deadNode's
// ranges, or "" when there is none.
func ReclaimHolder(ctx context.Context, client kubernetes.Interface, deadNode string) (string, error) {
	got, err := client.CoordinationV1().Leases(LeaseNamespace).Get(ctx, ReclaimLeaseName(deadNode), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read reclaim claim of %s: %w", deadNode, err)
	}
	if got.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *got.Spec.HolderIdentity, nil
}

// ReleaseReclaim deletes the claim on node's ranges, if any. A daemon calls
// it for its own node at start: it is alive, so whatever reclaim happened
// before is over, and a later deletion of its Node must be reclaimed anew.
func ReleaseReclaim(ctx context.Context, client kubernetes.Interface, node string) error {
	err := client.CoordinationV1().Leases(LeaseNamespace).Delete(ctx, ReclaimLeaseName(node), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete old reclaim claim of %s%s: %w", node, leaseHint(err, "delete"), err)
	}
	return nil
}

// PruneReclaims deletes reclaim claims created more than ttl ago (default
// DefaultReclaimTTL when ttl <= 0), by then long acted on, and returns how
// many it deleted. Any daemon may call it now and then; concurrent calls
// are harmless.
func PruneReclaims(ctx context.Context, client kubernetes.Interface, ttl time.Duration) (int, error) {
	if ttl <= 0 {
		ttl = DefaultReclaimTTL
	}
	leases := client.CoordinationV1().Leases(LeaseNamespace)
	list, err := leases.List(ctx, metav1.ListOptions{LabelSelector: labelComponent + "=" + componentReclaim + "," + labelName + "=" + labelNameValueWeft})
	if err != nil {
		return 0, fmt.Errorf("list reclaim claims%s: %w", leaseHint(err, "list"), err)
	}
	cutoff := time.Now().Add(-ttl)
	var n int
	var errs []error
	for _, l := range list.Items {
		if !l.CreationTimestamp.Time.Before(cutoff) {
			continue
		}
		uid := l.UID
		err := leases.Delete(ctx, l.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		switch {
		case err == nil:
			n++
		case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		default:
			errs = append(errs, fmt.Errorf("delete reclaim claim %s: %w", l.Name, err))
		}
	}
	return n, errors.Join(errs...)
}

// leaseHint says what to do when a request on the claims is refused or
// their namespace is missing: a daemon of this release under the manifest
// of an older one, which granted leases in kube-system.
func leaseHint(err error, verb string) string {
	if apierrors.IsForbidden(err) || apierrors.IsNotFound(err) {
		return fmt.Sprintf(" (needs the namespace %s and leases %s there: apply deploy/weft.yaml of this release)", LeaseNamespace, verb)
	}
	return ""
}
