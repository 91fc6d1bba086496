// Command agent is the one program of the pod image the kubelet tests run
// (kubenode.BuildImages puts it in an OCI image tarball, no registry). It is
// also the image's pause container:
//
//	agent pause          the sandbox's first process: reaps children and
//	                     waits for SIGTERM or SIGINT
//	agent serve [:8080]  an HTTP server a test asks to reach other pods:
//	  GET /whoami             this pod's name ($POD_NAME) and hostname
//	  GET /ping?ip=A          one ICMP echo (IPv4 or IPv6) to A; 200 with the round trip, or 502
//	  GET /get?url=U          GET U; 200 with its body, or 502
//
// It is static (CGO_ENABLED=0) and needs nothing of the image but itself.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: agent pause | agent serve [addr]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "pause":
		pause()
	case "serve":
		addr := ":8080"
		if len(os.Args) > 2 {
			addr = os.Args[2]
		}
		err = serve(addr)
	default:
		err = fmt.Errorf("unknown command %q: want pause or serve", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

// pause is what the pause container does: as PID 1 of the pod's PID
// namespace (when shared) it reaps orphans, and it exits on SIGTERM/SIGINT.
func pause() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

func serve(addr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &http.Server{Addr: addr, Handler: handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}
}

// handler serves the agent's endpoints (see the package comment).
func handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
		host, _ := os.Hostname()
		fmt.Fprintf(w, "%s %s\n", os.Getenv("POD_NAME"), host)
	})
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, r *http.Request) {
		ip, err := netip.ParseAddr(r.URL.Query().Get("ip"))
		if err != nil {
			http.Error(w, "ip: "+err.Error(), http.StatusBadRequest)
			return
		}
		rtt, err := ping(r.Context(), ip, 2*time.Second)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "reply from %s in %v\n", ip, rtt)
	})
	client := &http.Client{Timeout: 3 * time.Second}
	mux.HandleFunc("GET /get", func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, r.URL.Query().Get("url"), nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if err != nil || resp.StatusCode != http.StatusOK {
			http.Error(w, fmt.Sprintf("%s: %v %s", resp.Status, err, body), http.StatusBadGateway)
			return
		}
		w.Write(body)
	})
	return mux
}

// ping sends one ICMP (or ICMPv6) echo to dst and waits for its reply,
// through an unprivileged ICMP socket (containerd allows every group in
// the pod's net.ipv4.ping_group_range, which covers both families), else a
// raw one (CAP_NET_RAW).
func ping(ctx context.Context, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	dst = dst.Unmap()
	dgram, raw, laddr, proto := "udp4", "ip4:icmp", "0.0.0.0", 1
	var echo, reply, unreachable icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply, ipv4.ICMPTypeDestinationUnreachable
	if dst.Is6() {
		dgram, raw, laddr, proto = "udp6", "ip6:ipv6-icmp", "::", 58
		echo, reply, unreachable = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, ipv6.ICMPTypeDestinationUnreachable
	}
	network, to := dgram, net.Addr(&net.UDPAddr{IP: dst.AsSlice()})
	conn, err := icmp.ListenPacket(network, laddr)
	if err != nil {
		network, to = raw, &net.IPAddr{IP: dst.AsSlice()}
		if conn, err = icmp.ListenPacket(network, laddr); err != nil {
			return 0, fmt.Errorf("ping %s: open an ICMP socket: %w", dst, err)
		}
	}
	defer conn.Close()
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	id := os.Getpid() & 0xffff
	// The kernel fills in the ICMPv6 checksum.
	req, err := (&icmp.Message{Type: echo, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("weft-kubelet-test")}}).Marshal(nil)
	if err != nil {
		return 0, err
	}
	sent := time.Now()
	if _, err := conn.WriteTo(req, to); err != nil {
		return 0, fmt.Errorf("ping %s: send: %w", dst, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return 0, fmt.Errorf("ping %s: no reply within %v: %w", dst, timeout, err)
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		switch m.Type {
		case reply:
			// An unprivileged socket gets only its own replies (the
			// kernel rewrites the ID); a raw one gets every reply.
			if e, ok := m.Body.(*icmp.Echo); ok && (network == dgram || e.ID == id) && fromAddr(from) == dst {
				return time.Since(sent), nil
			}
		case unreachable:
			return 0, errors.New("ping " + dst.String() + ": destination unreachable")
		}
	}
}

func fromAddr(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.IPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}
