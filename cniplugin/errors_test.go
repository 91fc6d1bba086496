package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/api"
)

func TestDaemonError(t *testing.T) {
	const sock = "/run/weft/weft.sock"
	tests := []struct {
		name       string
		err        error
		notRunning uint
		code       uint
		msg        string
	}{
		{"not running, ADD", fmt.Errorf("%w (nothing listens on %s)", api.ErrDaemonNotRunning, sock), types.ErrTryAgainLater, types.ErrTryAgainLater, "not running on this node (nothing listens on " + sock},
		{"not running, STATUS", api.ErrDaemonNotRunning, types.ErrPluginNotAvailable, types.ErrPluginNotAvailable, "not running"},
		{"full", &api.Error{Code: api.CodeFull, Message: "no free address"}, 11, types.ErrTryAgainLater, "no free address"},
		{"not ready", &api.Error{Code: api.CodeNotReady, Message: "not in the mesh"}, 11, types.ErrTryAgainLater, "not in the mesh"},
		{"unknown", &api.Error{Code: api.CodeUnknown, Message: "no allocation"}, 11, types.ErrUnknownContainer, "no allocation"},
		{"bad request", &api.Error{Code: api.CodeBadRequest, Message: "containerID"}, 11, types.ErrInvalidEnvironmentVariables, "containerID"},
		{"internal", &api.Error{Code: api.CodeInternal, Message: "disk"}, 11, types.ErrInternal, "disk"},
		{"unknown code", &api.Error{Code: "new-thing", Message: "x"}, 11, types.ErrInternal, "x"},
		{"timeout", fmt.Errorf("talk: %w", context.DeadlineExceeded), 11, types.ErrTryAgainLater, "did not answer within 5s"},
		{"other", errors.New("decode answer of the weft daemon: garbage"), 11, types.ErrIOFailure, "garbage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := daemonError("allocate", sock, 5*time.Second, tt.notRunning, tt.err)
			if e.Code != tt.code || !strings.Contains(e.Msg, tt.msg) || !strings.HasPrefix(e.Msg, "cannot allocate") {
				t.Errorf("got code %d %q, want code %d containing %q", e.Code, e.Msg, tt.code, tt.msg)
			}
		})
	}
}

func TestAsCNIError(t *testing.T) {
	inner := types.NewError(types.ErrIOFailure, "x", "")
	if got := asCNIError(fmt.Errorf("wrap: %w", inner)); got != inner {
		t.Errorf("asCNIError did not keep the CNI error: %v", got)
	}
	if got := asCNIError(errors.New("y")); got.Code != types.ErrInternal {
		t.Errorf("asCNIError(plain) code %d, want %d", got.Code, types.ErrInternal)
	}
}
