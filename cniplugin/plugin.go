// Package cniplugin is the CNI plugin that container runtimes call as
// weft-cni. It keeps no state of its own: addresses come from the weft daemon
// over its local socket.
package cniplugin

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	weftversion "github.com/weftnet/weft/version"
)

// BinaryName is the name the runtime calls the plugin by; main dispatches on it.
const BinaryName = "weft-cni"

// SupportedVersions are the CNI spec versions the plugin answers VERSION with.
var SupportedVersions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// Main runs the plugin through the CNI skel and exits.
func Main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    notYet,
		Del:    notYet,
		Check:  notYet,
		GC:     notYet,
		Status: notYet,
	}, SupportedVersions, "weft-cni "+weftversion.Version)
}

func notYet(_ *skel.CmdArgs) error {
	return types.NewError(types.ErrPluginNotAvailable,
		"weft-cni does not implement this command yet",
		"this build of weft only answers VERSION; install a release with the CNI plugin")
}
