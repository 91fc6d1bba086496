package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weftnet/weft/api"
)

// fakeBackend answers CNI requests: ADD fails with full for the container
// "full", CHECK knows nothing; the rest succeeds.
type fakeBackend struct{ backend }

func (fakeBackend) Allocate(_ context.Context, a api.Attachment) (api.Allocation, error) {
	if a.ContainerID == "full" {
		return api.Allocation{}, &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeFull, Message: "no free address"}
	}
	return api.Allocation{Attachment: a}, nil
}

func (fakeBackend) Release(_ context.Context, a api.Attachment) (api.Allocation, bool, error) {
	return api.Allocation{Attachment: a}, true, nil
}

func (fakeBackend) Check(context.Context, api.Attachment) (api.Allocation, error) {
	return api.Allocation{}, &api.Error{Status: http.StatusNotFound, Code: api.CodeUnknown, Message: "no allocation"}
}

func (fakeBackend) GC(context.Context, []api.Attachment) ([]api.Allocation, error) {
	return nil, errors.New("disk on fire")
}

// Every CNI request is counted by operation and result, and timed, in the
// daemon's API handlers; a malformed request counts as bad-request, an
// error that is not an api error as internal.
func TestCNIRequestMetrics(t *testing.T) {
	m := newMetrics()
	srv := httptest.NewServer((&apiServer{b: fakeBackend{}, log: slog.New(slog.DiscardHandler), metrics: m}).handler())
	defer srv.Close()
	post := func(path, body string) {
		t.Helper()
		resp, err := http.Post(srv.URL+path, "application/json", bytes.NewBufferString(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	post(api.PathCNIAllocate, `{"containerID":"c1","ifName":"eth0"}`)
	post(api.PathCNIAllocate, `{"containerID":"c2","ifName":"eth0"}`)
	post(api.PathCNIAllocate, `{"containerID":"full","ifName":"eth0"}`)
	post(api.PathCNIAllocate, `{"containerID":"c3"}`)
	post(api.PathCNIRelease, `{"containerID":"c1","ifName":"eth0"}`)
	post(api.PathCNICheck, `{"containerID":"c2","ifName":"eth0"}`)
	post(api.PathCNICheck, `not json`)
	post(api.PathCNIGC, `{"valid":[]}`)

	want := `
# HELP weft_cni_requests_total CNI requests (ADD, DEL, CHECK, GC) the daemon handled, by operation and result (success or the error code).
# TYPE weft_cni_requests_total counter
weft_cni_requests_total{operation="add",result="bad-request"} 1
weft_cni_requests_total{operation="add",result="full"} 1
weft_cni_requests_total{operation="add",result="success"} 2
weft_cni_requests_total{operation="check",result="bad-request"} 1
weft_cni_requests_total{operation="check",result="success"} 0
weft_cni_requests_total{operation="check",result="unknown"} 1
weft_cni_requests_total{operation="del",result="success"} 1
weft_cni_requests_total{operation="gc",result="internal"} 1
weft_cni_requests_total{operation="gc",result="success"} 0
`
	if err := testutil.CollectAndCompare(m.cniRequests, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.cniDuration)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, mf := range mfs {
		for _, met := range mf.GetMetric() {
			counts[met.GetLabel()[0].GetValue()] = met.GetHistogram().GetSampleCount()
		}
	}
	for op, n := range map[string]uint64{opAdd: 4, opDel: 1, opCheck: 2, opGC: 1} {
		if counts[op] != n {
			t.Errorf("weft_cni_request_duration_seconds_count{operation=%q} = %d, want %d", op, counts[op], n)
		}
	}
	if problems, err := testutil.CollectAndLint(m.cniRequests); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// Policy applies are timed and failed ones counted, repairs included.
func TestPolicyApplyMetrics(t *testing.T) {
	m := newMetrics()
	m.observePolicyApply(2e6, nil)
	m.observePolicyApply(3e6, errors.New("EBUSY"))
	m.observePolicyRepairError()
	if got := testutil.ToFloat64(m.policyFailing); got != 2 {
		t.Errorf("weft_policy_apply_errors_total = %v, want 2", got)
	}
	if n := testutil.CollectAndCount(m.policyApply, "weft_policy_apply_duration_seconds"); n != 1 {
		t.Errorf("apply duration series = %d, want 1", n)
	}
	var nilMetrics *metrics // a daemon part that counts nothing
	nilMetrics.observeCNI(opAdd, 0, nil)
	nilMetrics.observePolicyApply(0, nil)
}
