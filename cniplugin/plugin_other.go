//go:build !linux

package cniplugin

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/types"
)

// Main prints a CNI error and exits: the plugin configures Linux network
// namespaces and runs nowhere else.
func Main() {
	_ = types.NewError(types.ErrPluginNotAvailable, "weft-cni runs only on Linux", about()).Print()
	fmt.Fprintln(os.Stderr, "weft-cni runs only on Linux")
	os.Exit(1)
}
