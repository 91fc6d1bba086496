package tests

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// TestHealthAndMetrics: the probes the DaemonSet uses and the Prometheus
// metrics answer on --metrics-addr.
func TestHealthAndMetrics(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nodes, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	startAll(t, ctx, nodes, func(*netlab.Node) []string {
		return append(seedArgs(nodes[0], nodes), "--metrics-addr", ":6782")
	})
	waitMesh(t, ctx, nodes)
	n := nodes[0]
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return n.Dial(ctx, network, addr) },
	}}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get("http://" + n.Addr.String() + ":6782" + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := get(p); code != http.StatusOK {
			t.Errorf("%s = %d %s", p, code, body)
		}
	}
	var body string
	poll(t, ctx, func() error {
		_, body = get("/metrics")
		for _, want := range []string{"weft_ready 1", `weft_peer_up{peer="node2"} 1`, "weft_mesh_members 2", "weft_ipam_allocations"} {
			if !strings.Contains(body, want) {
				return &missing{want}
			}
		}
		return nil
	})
}

type missing struct{ what string }

func (m *missing) Error() string { return "metrics lack " + m.what }
