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
	GenesisName  = "weft-ipam-genesis"
	genesisCIDR  = "podCIDR"
	genesisCIDR6 = "podCIDR6" // the IPv6 range of a dual-stack cluster; absent otherwise
	genesisSeed  = "seed"
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
	return EnsureGenesisDual(ctx, client, podCIDR, netip.Prefix{}, candidates)
}

// EnsureGenesisDual is EnsureGenesis for a dual-stack cluster: podCIDR6 is
// the IPv6 range beside the IPv4 podCIDR (invalid: none). A genesis that
// records another IPv6 range is an error (ErrGenesisMismatch); one that
// records none (written before the cluster had an IPv6 range) is adopted.
func EnsureGenesisDual(ctx context.Context, client kubernetes.Interface, podCIDR, podCIDR6 netip.Prefix, candidates []string) ([]string, error) {
	if !podCIDR.IsValid() {
		return nil, fmt.Errorf("IPAM genesis: invalid pod CIDR %v", podCIDR)
	}
	podCIDR = podCIDR.Masked()
	seed := slices.Compact(slices.Sorted(slices.Values(candidates)))
	seed = slices.DeleteFunc(seed, func(s string) bool { return s == "" })
	cms := client.CoreV1().ConfigMaps(Namespace)
	got, err := cms.Get(ctx, GenesisName, metav1.GetOptions{})
	if err == nil {
		return genesisSeedOf(got, podCIDR, podCIDR6)
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
	if podCIDR6.IsValid() {
		cm.Data[genesisCIDR6] = podCIDR6.Masked().String()
	}
	created, err := cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: fieldManager})
	switch {
	case err == nil:
		return genesisSeedOf(created, podCIDR, podCIDR6)
	case apierrors.IsAlreadyExists(err):
		got, err := cms.Get(ctx, GenesisName, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("read ConfigMap %s/%s another daemon created: %w", Namespace, GenesisName, err)
		}
		return genesisSeedOf(got, podCIDR, podCIDR6)
	default:
		return nil, fmt.Errorf("create ConfigMap %s/%s (RBAC: configmaps create): %w", Namespace, GenesisName, err)
	}
}

func genesisSeedOf(cm *corev1.ConfigMap, podCIDR, podCIDR6 netip.Prefix) ([]string, error) {
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
	if s, ok := cm.Data[genesisCIDR6]; ok {
		cidr6, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("ConfigMap %s: bad %s %q: %w; fix it by hand or delete it together with every node's weft state",
				where, genesisCIDR6, s, err)
		}
		if cidr6.Masked() != podCIDR6.Masked() {
			return nil, fmt.Errorf("%w: ConfigMap %s says the IPv6 pod range is %s, this daemon has %v; run every node with --pod-cidr %s,%s",
				ErrGenesisMismatch, where, cidr6, podCIDR6, cidr, cidr6)
		}
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
