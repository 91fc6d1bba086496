// Command weft is a Kubernetes pod network: gossip membership, a full mesh of
// WireGuard tunnels, a CRDT address allocator and NetworkPolicy, in one binary.
//
// The binary dispatches on the name it was started under: as weft-cni it is
// the CNI plugin the container runtime calls; under any other name it is the
// weft command line (daemon, status, demo, ...).
package main

import (
	"os"
	"path/filepath"

	"github.com/weftnet/weft/cli"
	"github.com/weftnet/weft/cniplugin"
)

func main() {
	if filepath.Base(os.Args[0]) == cniplugin.BinaryName {
		cniplugin.Main()
		return
	}
	os.Exit(cli.Main(os.Args[1:]))
}
