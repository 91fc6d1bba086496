package daemon

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/policy"
)

func whyExplainer() *policy.Explainer {
	pod := func(name string, ips ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name},
			Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		return p
	}
	in := policy.Input{NodeName: "n1", Pods: []*corev1.Pod{pod("a", "10.32.0.2", "fd00::2"), pod("b", "10.32.0.3")}}
	return policy.NewExplainer(in, policy.Compile(in))
}

func TestWhyPacket(t *testing.T) {
	e := whyExplainer()
	tests := []struct {
		req  api.WhyRequest
		want string // Packet.String, or "error"
	}{
		{api.WhyRequest{Src: "x/a", Dst: "x/b", Proto: "tcp", Port: 80}, "10.32.0.2 -> 10.32.0.3 tcp/80"},
		{api.WhyRequest{Src: "x/a", Dst: "x/b"}, "10.32.0.2 -> 10.32.0.3 icmp/0"},
		{api.WhyRequest{Src: "x/a", Dst: "fd00::9"}, "fd00::2 -> fd00::9 icmpv6/0"},
		{api.WhyRequest{Src: "x/a", Dst: "x/b", Proto: "icmpv6"}, "10.32.0.2 -> 10.32.0.3 icmp/0"},
		{api.WhyRequest{Src: "192.168.1.1", Dst: "x/b", Proto: "UDP", Port: 53}, "192.168.1.1 -> 10.32.0.3 udp/53"},
		{api.WhyRequest{Src: "x/a", Dst: "x/b", Proto: "tcp"}, "error"},
		{api.WhyRequest{Src: "x/a", Dst: "x/b", Proto: "icmp", Port: 8}, "error"},
		{api.WhyRequest{Src: "x/a", Dst: "x/b", Proto: "any"}, "error"},
		{api.WhyRequest{Src: "x/a", Dst: "x/b", Proto: "smtp", Port: 25}, "error"},
		{api.WhyRequest{Src: "x/zz", Dst: "x/b"}, "error"},
	}
	for _, tt := range tests {
		pkt, err := whyPacket(e, tt.req)
		got := pkt.String()
		if err != nil {
			got = "error"
		}
		if got != tt.want {
			t.Errorf("whyPacket(%+v) = %s (%v), want %s", tt.req, got, err, tt.want)
		}
	}
}

func FuzzWhyPacket(f *testing.F) {
	f.Add("x/a", "x/b", "tcp", uint16(80))
	f.Add("10.32.0.2", "::1", "", uint16(0))
	e := whyExplainer()
	f.Fuzz(func(t *testing.T, src, dst, proto string, port uint16) {
		pkt, err := whyPacket(e, api.WhyRequest{Src: src, Dst: dst, Proto: proto, Port: port})
		if err != nil {
			return
		}
		if pkt.Src.BitLen() != pkt.Dst.BitLen() || pkt.Proto.HasPorts() != (pkt.Port != 0) {
			t.Fatalf("whyPacket made %s", pkt)
		}
		e.WhyCluster(pkt, nil)
	})
}
