package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/api"
)

// ErrCheckMismatch is the CNI error code (plugin-specific, 100 and up) of a
// CHECK that found the pod's network different from what weft configured.
const ErrCheckMismatch uint = 100

// daemonError turns an error of the daemon client into a CNI error. what
// says what the plugin asked for ("allocate an address for the pod");
// notRunning is the code when nothing listens on the socket (11 for ADD,
// 50 for STATUS).
func daemonError(what, socket string, timeout time.Duration, notRunning uint, err error) *types.Error {
	var apiErr *api.Error
	var netErr net.Error
	switch {
	case errors.Is(err, api.ErrDaemonNotRunning):
		return types.NewError(notRunning,
			fmt.Sprintf("cannot %s: the weft daemon is not running on this node (nothing listens on %s)", what, socket),
			"start weft on this node (the weft DaemonSet pod, or `weft daemon`), or fix \"socket\" in the network config")
	case errors.As(err, &apiErr):
		return types.NewError(codeOf(apiErr.Code),
			fmt.Sprintf("cannot %s: the weft daemon says: %s", what, apiErr.Message), apiErr.Hint)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("cannot %s: the weft daemon on %s did not answer within %s", what, socket, timeout),
			"the daemon may be starting or overloaded; see its log (kubectl logs of the weft pod on this node)")
	default:
		return types.NewError(types.ErrIOFailure,
			fmt.Sprintf("cannot %s: %v", what, err),
			"see the weft daemon's log on this node")
	}
}

// codeOf maps the daemon's error code to the CNI error code.
func codeOf(code string) uint {
	switch code {
	case api.CodeFull, api.CodeNotReady:
		// Both can clear up: pods end and free addresses, peers donate
		// space, the daemon joins the mesh. The runtime retries.
		return types.ErrTryAgainLater
	case api.CodeUnknown:
		return types.ErrUnknownContainer
	case api.CodeBadRequest:
		// What the plugin sends comes from CNI_CONTAINERID, CNI_IFNAME
		// and CNI_NETNS.
		return types.ErrInvalidEnvironmentVariables
	default:
		return types.ErrInternal
	}
}

// asCNIError keeps a *types.Error and wraps anything else as internal.
func asCNIError(err error) *types.Error {
	var e *types.Error
	if errors.As(err, &e) {
		return e
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}
