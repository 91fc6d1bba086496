package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The ConfigMap that fixes the genesis of the address ring.
const (
	GenesisName = "weft-ipam-genesis"
	genesisCIDR = "podCIDR"
	genesisSeed = "seed"
)

// ErrGenesisMismatch says the cluster's genesis is for another pod CIDR.
var ErrGenesisMismatch = errors.New("the cluster's IPAM genesis is for another pod CIDR")

// EnsureGenesis returns the seed list of the address ring's genesis, kept
// in the ConfigMap weft-ipam-genesis of kube-system: the pod CIDR and the
// names of the seed nodes. When the ConfigMap does not exist it is created
// with candidates (sorted, without duplicates) as the seed list; the
// creation is create-if-absent, so when several daemons race, one list
// wins and every daemon returns it. The caller passes the result as
// ipalloc.Config.Seed; a node not in it starts with no ranges and asks for
// a donation.
//
// A genesis for another pod CIDR is an error (ErrGenesisMismatch), never
// adopted: every node must run with the same --pod-cidr.
func EnsureGenesis(ctx context.Context, client kubernetes.Interface, podCIDR netip.Prefix, candidates []string) ([]string, error) {
	if !podCIDR.IsValid() {
		return nil, fmt.Errorf("IPAM genesis: invalid pod CIDR %v", podCIDR)
	}
	podCIDR = podCIDR.Masked()
	seed := slices.Compact(slices.Sorted(slices.Values(candidates)))
	seed = slices.DeleteFunc(seed, func(s string) bool { return s == "" })
	cms := client.CoreV1().ConfigMaps(Namespace)
	got, err := cms.Get(ctx, GenesisName, metav1.GetOptions{})
	if err == nil {
		return genesisSeedOf(got, podCIDR)
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("read ConfigMap %s/%s (RBAC: configmaps get): %w", Namespace, GenesisName, err)
	}
	if len(seed) == 0 {
		return nil, errors.New("IPAM genesis: no candidate seed node (pass at least this node's name)")
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:      GenesisName,
			Namespace: Namespace,
			Labels:    map[string]string{"app.kubernetes.io/name": "weft"},
			Annotations: map[string]string{
				"weft.dev/description": "genesis of weft's address ring: written once by the first daemon, read by every other; " +
					"delete it only together with every node's weft state (weft reset on every node)",
			},
		},
		Data: map[string]string{
			genesisCIDR: podCIDR.String(),
			genesisSeed: strings.Join(seed, ","),
		},
	}
	created, err := cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: fieldManager})
	switch {
	case err == nil:
		return genesisSeedOf(created, podCIDR)
	case apierrors.IsAlreadyExists(err):
		got, err := cms.Get(ctx, GenesisName, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("read ConfigMap %s/%s another daemon created: %w", Namespace, GenesisName, err)
		}
		return genesisSeedOf(got, podCIDR)
	default:
		return nil, fmt.Errorf("create ConfigMap %s/%s (RBAC: configmaps create): %w", Namespace, GenesisName, err)
	}
}

func genesisSeedOf(cm *corev1.ConfigMap, podCIDR netip.Prefix) ([]string, error) {
	where := cm.Namespace + "/" + cm.Name
	cidr, err := netip.ParsePrefix(cm.Data[genesisCIDR])
	if err != nil {
		return nil, fmt.Errorf("ConfigMap %s: bad %s %q: %w; fix it by hand or delete it together with every node's weft state",
			where, genesisCIDR, cm.Data[genesisCIDR], err)
	}
	if cidr.Masked() != podCIDR {
		return nil, fmt.Errorf("%w: ConfigMap %s says %s, this daemon has --pod-cidr %s; run every node with --pod-cidr %s",
			ErrGenesisMismatch, where, cidr, podCIDR, cidr)
	}
	var seed []string
	for s := range strings.SplitSeq(cm.Data[genesisSeed], ",") {
		if s = strings.TrimSpace(s); s != "" {
			seed = append(seed, s)
		}
	}
	if len(seed) == 0 {
		return nil, fmt.Errorf("ConfigMap %s names no seed node; fix it by hand or delete it together with every node's weft state", where)
	}
	return seed, nil
}
