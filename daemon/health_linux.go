package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func nowUnix() int64 { return time.Now().Unix() }

// serveHealth serves /healthz (the process is alive), /readyz (pods can be
// networked) and /metrics (Prometheus) on --metrics-addr, resolved by
// healthAddrs.
func (a *agent) serveHealth(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if rd := a.Ready(); !rd.Ready {
			http.Error(w, "not ready: "+rd.Reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	reg := prometheus.NewRegistry()
	// go_gc_heap_live_bytes (the heap marked live by the last collection)
	// beside the memstats: what the daemon holds, whatever garbage waits
	// for the next collection.
	goCollector := collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)}))
	reg.MustRegister(metricsCollector{a}, goCollector, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(a.metrics.collectors()...)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var addrs []string
	for i, addr := range a.healthAddrs {
		ln, err := net.Listen("tcp", addr)
		if err != nil && i > 0 {
			// Loopback, a convenience beside the node's address.
			a.log.Warn("not serving /metrics on loopback", "addr", addr, "err", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("listen on %s (--metrics-addr %s): %w", addr, a.cfg.MetricsAddr, err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, addr)
	}
	a.log.Info("serving /metrics, /healthz and /readyz", "addrs", addrs)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { done <- srv.Serve(ln) }()
	}
	var err error
	pending := len(lns)
	select {
	case err = <-done:
		pending--
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		} else {
			err = fmt.Errorf("serve --metrics-addr %s: %w", a.cfg.MetricsAddr, err)
		}
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	// Every other Serve returns once Shutdown closed its listener.
	for range pending {
		<-done
	}
	return err
}
