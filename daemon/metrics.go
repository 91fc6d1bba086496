package daemon

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/api"
)

// latencyBuckets spans a CNI request answered from memory (well under a
// millisecond) to one that waits for address space, and a policy apply of
// a few rules to one of many thousand.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// CNI operations, as the metrics label them.
const (
	opAdd   = "add"
	opDel   = "del"
	opCheck = "check"
	opGC    = "gc"
)

// resultSuccess labels a request that succeeded; a failed one is labelled
// with its api error code (full, not-ready, unknown, bad-request, internal).
const resultSuccess = "success"

// metrics are what is counted where it happens: CNI requests and policy
// applies. Everything else is read from the daemon's state at scrape time
// (metricsCollector). Its methods may be called from many goroutines, and on
// a nil *metrics do nothing.
type metrics struct {
	cniRequests   *prometheus.CounterVec
	cniDuration   *prometheus.HistogramVec
	policyApply   prometheus.Histogram
	policyFailing prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		cniRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_cni_requests_total",
			Help: "CNI requests (ADD, DEL, CHECK, GC) the daemon handled, by operation and result (success or the error code).",
		}, []string{"operation", "result"}),
		cniDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "weft_cni_request_duration_seconds",
			Help:    "Time the daemon took to handle a CNI request, from its arrival on the API socket to its answer.",
			Buckets: latencyBuckets,
		}, []string{"operation"}),
		policyApply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "weft_policy_apply_duration_seconds",
			Help:    "Time to compile the NetworkPolicy rule set after a change and apply it to nftables.",
			Buckets: latencyBuckets,
		}),
		policyFailing: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_policy_apply_errors_total",
			Help: "Failed writes of the NetworkPolicy rules to nftables (applies and periodic repairs); each is retried.",
		}),
	}
	// Every operation is there from the start, so a rate is 0, not absent.
	for _, op := range []string{opAdd, opDel, opCheck, opGC} {
		m.cniRequests.WithLabelValues(op, resultSuccess)
		m.cniDuration.WithLabelValues(op)
	}
	return m
}

// collectors are the metrics to register.
func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.cniRequests, m.cniDuration, m.policyApply, m.policyFailing}
}

// observeCNI counts one CNI request of operation op that took d and ended
// with err.
func (m *metrics) observeCNI(op string, d time.Duration, err error) {
	if m == nil {
		return
	}
	result := resultSuccess
	if err != nil {
		result = api.CodeInternal
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code != "" {
			result = ae.Code
		}
	}
	m.cniRequests.WithLabelValues(op, result).Inc()
	m.cniDuration.WithLabelValues(op).Observe(d.Seconds())
}

// observePolicyApply records one compile and apply of the policy rules.
func (m *metrics) observePolicyApply(d time.Duration, err error) {
	if m == nil {
		return
	}
	m.policyApply.Observe(d.Seconds())
	if err != nil {
		m.policyFailing.Inc()
	}
}

// observePolicyRepairError counts a failed periodic repair.
func (m *metrics) observePolicyRepairError() {
	if m != nil {
		m.policyFailing.Inc()
	}
}
