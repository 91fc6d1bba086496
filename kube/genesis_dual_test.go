package kube

import (
	"errors"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestEnsureGenesisDual: a dual-stack genesis records the IPv6 range, and
// a daemon with another IPv6 range (or none) is refused; an IPv4-only
// genesis records none and is adopted by a dual-stack daemon.
func TestEnsureGenesisDual(t *testing.T) {
	ctx := t.Context()
	v4, v6 := netip.MustParsePrefix("10.40.0.0/16"), netip.MustParsePrefix("fd10:40::/48")
	client := fake.NewClientset()
	if _, err := EnsureGenesisDual(ctx, client, v4, v6, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	cm, err := client.CoreV1().ConfigMaps(Namespace).Get(ctx, GenesisName, metav1.GetOptions{})
	if err != nil || cm.Data[genesisCIDR6] != "fd10:40::/48" {
		t.Fatalf("genesis ConfigMap %v, %v: want podCIDR6 fd10:40::/48", cm, err)
	}
	if seed, err := EnsureGenesisDual(ctx, client, v4, v6, []string{"b"}); err != nil || len(seed) != 1 || seed[0] != "a" {
		t.Errorf("second daemon: %v, %v; want seed [a]", seed, err)
	}
	for _, other := range []netip.Prefix{netip.MustParsePrefix("fd10:41::/48"), {}} {
		if _, err := EnsureGenesisDual(ctx, client, v4, other, []string{"b"}); !errors.Is(err, ErrGenesisMismatch) {
			t.Errorf("daemon with IPv6 range %v: %v, want ErrGenesisMismatch", other, err)
		}
	}
	v4only := fake.NewClientset()
	if _, err := EnsureGenesis(ctx, v4only, v4, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if cm, _ := v4only.CoreV1().ConfigMaps(Namespace).Get(ctx, GenesisName, metav1.GetOptions{}); cm == nil || len(cm.Data) != 2 {
		t.Errorf("IPv4-only genesis holds %v, want podCIDR and seed only", cm)
	}
	if _, err := EnsureGenesisDual(ctx, v4only, v4, v6, []string{"b"}); err != nil {
		t.Errorf("dual-stack daemon in a cluster whose genesis predates IPv6: %v", err)
	}
}

// TestPublishNodeDualStack: a dual-stack node's IPv6 tunnel address is
// published beside the IPv4 one and removed when it has none.
func TestPublishNodeDualStack(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset(node("a", internal("10.0.0.1")))
	info := NodeInfo{PublicKey: "pk=", TunnelAddr: "10.40.0.1", TunnelAddr6: "fd10:40::1"}
	if err := PublishNode(ctx, client, "a", info); err != nil {
		t.Fatal(err)
	}
	got, _ := client.CoreV1().Nodes().Get(ctx, "a", metav1.GetOptions{})
	if got.Annotations[AnnotationTunnelAddr6] != "fd10:40::1" || got.Annotations[AnnotationTunnelAddr] != "10.40.0.1" {
		t.Errorf("annotations %v", got.Annotations)
	}
	info.TunnelAddr6 = ""
	if err := PublishNode(ctx, client, "a", info); err != nil {
		t.Fatal(err)
	}
	got, _ = client.CoreV1().Nodes().Get(ctx, "a", metav1.GetOptions{})
	if _, ok := got.Annotations[AnnotationTunnelAddr6]; ok {
		t.Errorf("empty TunnelAddr6 left the annotation: %v", got.Annotations)
	}
}
