package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/weftnet/weft/api"
)

// whyBackend answers Why from an explainer; the other methods are not
// called.
type whyBackend struct{ backend }

func (b whyBackend) Why(_ context.Context, req api.WhyRequest) (WhyAnswer, error) {
	pkt, err := whyPacket(whyExplainer(), req)
	if err != nil {
		return WhyAnswer{}, &api.Error{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: err.Error()}
	}
	return WhyAnswer{AnsweredBy: "n1", Verdict: whyExplainer().WhyCluster(pkt, nil)}, nil
}

func TestWhyEndpoint(t *testing.T) {
	s := &apiServer{b: whyBackend{}, log: slog.New(slog.DiscardHandler)}
	h := s.handler()
	tests := []struct {
		body   string
		status int
		has    string
	}{
		{`{"src":"x/a","dst":"x/b","proto":"tcp","port":80}`, http.StatusOK, `"answeredBy":"n1"`},
		{`{"src":"x/a","dst":"x/b","proto":"tcp","port":80}`, http.StatusOK, `"ingress":{"decision":"not-isolated"`},
		{`{"src":"x/a"}`, http.StatusBadRequest, "src and dst are required"},
		{`{"src":"x/a","dst":"x/b","proto":"tcp"}`, http.StatusBadRequest, "needs a destination port"},
		{`{"src":"x/a","dst":"x/b","colour":"red"}`, http.StatusBadRequest, "malformed request"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, api.PathPolicyWhy, strings.NewReader(tt.body)))
		if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.has) {
			t.Errorf("POST %s: %d %s, want %d with %q", tt.body, rec.Code, rec.Body.String(), tt.status, tt.has)
		}
		if rec.Code == http.StatusOK {
			var a WhyAnswer
			if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil || a.Src.Pod != "x/a" {
				t.Errorf("answer %s does not decode as a WhyAnswer: %v", rec.Body.String(), err)
			}
		}
	}
}
