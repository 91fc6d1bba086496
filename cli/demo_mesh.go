package cli

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/netlab"
)

// The demo's later steps: the mesh, pods, a ping matrix and a look at the
// underlay.

func (d *demo) peers(ctx context.Context, n *netlab.Node) (daemon.PeersStatus, error) {
	var st daemon.PeersStatus
	err := api.NewClient(n.SocketPath(), 5*time.Second).Do(ctx, http.MethodGet, api.PathStatus+"/peers", nil, &st)
	return st, err
}

// waitMesh waits until every daemon is ready, sees every other node alive
// and has a handshake with it.
func (d *demo) waitMesh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.wait)
	defer cancel()
	start := time.Now()
	d.tunnel = map[string]netip.Addr{}
	for {
		missing := ""
		for _, n := range d.nodes {
			st, err := d.peers(ctx, n)
			if err != nil {
				missing = fmt.Sprintf("%s: %v", n.Name, err)
				break
			}
			if !st.Ready {
				missing = fmt.Sprintf("%s: %s", n.Name, st.Reason)
				break
			}
			d.tunnel[n.Name], _ = netip.ParseAddr(st.TunnelAddr)
			ok := 0
			for _, p := range st.Peers {
				if p.State == "alive" && p.LastHandshake != "" && carries(p.AllowedIPs, p.TunnelAddr) {
					ok++
				}
			}
			if ok != len(d.nodes)-1 {
				missing = fmt.Sprintf("%s has tunnels with handshakes to %d of %d peers", n.Name, ok, len(d.nodes)-1)
				break
			}
		}
		if missing == "" {
			fmt.Fprintf(d.out, "full mesh of %d nodes after %v\n", len(d.nodes), time.Since(start).Round(10*time.Millisecond))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no full mesh after %v: %s", d.wait, missing)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *demo) printMesh(ctx context.Context) error {
	for i, n := range d.nodes {
		if i > 0 {
			fmt.Fprintln(d.out)
		}
		st, err := d.peers(ctx, n)
		if err != nil {
			return err
		}
		if err := printPeers(d.out, st); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) pingNodes(ctx context.Context) error {
	var names []string
	var addrs []netip.Addr
	for _, n := range d.nodes {
		names = append(names, fmt.Sprintf("%s %s", n.Name, d.tunnel[n.Name]))
		addrs = append(addrs, d.tunnel[n.Name])
	}
	return d.matrix(ctx, names, len(d.nodes), func(i int) string { return d.nodes[i].Netns }, addrs)
}

func (d *demo) addPods(ctx context.Context) error {
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNODE\tADDRESS\tNETNS")
	for _, n := range d.nodes {
		for i := range 2 {
			p, err := n.AddPod(ctx, netlab.PodConfig{Namespace: "default", Name: fmt.Sprintf("pod-%s-%c", n.Name, 'a'+i)})
			if err != nil {
				return err
			}
			d.pods = append(d.pods, p)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, n.Name, p.IP(), p.Netns)
		}
	}
	return tw.Flush()
}

// pingPods pings every pod from every pod while capturing on the underlay,
// then says what crossed the wire.
func (d *demo) pingPods(ctx context.Context) error {
	capture, err := d.lab.Capture(ctx)
	if err != nil {
		return err
	}
	var names []string
	var addrs []netip.Addr
	for _, p := range d.pods {
		names = append(names, p.Name)
		addrs = append(addrs, p.IP())
	}
	if err := d.matrix(ctx, names, len(d.pods), func(i int) string { return d.pods[i].Netns }, addrs); err != nil {
		capture.Stop()
		return err
	}
	packets := capture.Stop()
	wg, gossip, other, clear := 0, 0, 0, 0
	pods := map[netip.Addr]bool{}
	for _, a := range addrs {
		pods[a] = true
	}
	for _, p := range packets {
		switch {
		case p.Proto == netlab.ProtoUDP && (p.SrcPort == 6784 || p.DstPort == 6784):
			wg++
		case (p.Proto == netlab.ProtoUDP || p.Proto == netlab.ProtoTCP) && (p.SrcPort == 6783 || p.DstPort == 6783):
			gossip++
		case p.Proto == netlab.ProtoARP:
		default:
			other++
		}
		if pods[p.Src] || pods[p.Dst] {
			clear++
		}
	}
	fmt.Fprintf(d.out, "\nthe underlay carried %d frames meanwhile: %d WireGuard (UDP 6784), %d encrypted gossip (6783), %d other; pod addresses in clear: %d\n",
		len(packets), wg, gossip, other, clear)
	return nil
}

// matrix pings addrs[j] from the netns of row i for every pair and prints
// round-trip times.
func (d *demo) matrix(ctx context.Context, names []string, n int, netns func(int) string, addrs []netip.Addr) error {
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "from \\ to\t")
	for j := range n {
		fmt.Fprintf(tw, "%d\t", j+1)
	}
	fmt.Fprintln(tw)
	failed := 0
	for i := range n {
		fmt.Fprintf(tw, "%d %s\t", i+1, names[i])
		for j := range n {
			if i == j {
				fmt.Fprint(tw, "-\t")
				continue
			}
			rtt, err := pingRetry(ctx, netns(i), addrs[j])
			if err != nil {
				failed++
				fmt.Fprint(tw, "FAIL\t")
				continue
			}
			fmt.Fprintf(tw, "%.2fms\t", float64(rtt.Microseconds())/1000)
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d pings failed", failed, n*(n-1))
	}
	fmt.Fprintf(d.out, "all %d pairs answer\n", n*(n-1))
	return nil
}

// carries reports whether a peer's AllowedIPs hold its tunnel address, so
// traffic to it is routed into its tunnel.
func carries(allowed []string, addr string) bool {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	for _, s := range allowed {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

// pingRetry allows a first ping to wait for a handshake, on a busy machine
// too.
func pingRetry(ctx context.Context, netns string, dst netip.Addr) (time.Duration, error) {
	var err error
	for range 5 {
		var rtt time.Duration
		if rtt, err = netlab.Ping(ctx, netns, dst, time.Second); err == nil {
			return rtt, nil
		}
	}
	return 0, err
}
