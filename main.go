// Command weft is a Kubernetes pod network: gossip membership, a full mesh of
// WireGuard tunnels, a CRDT address allocator and NetworkPolicy, in one binary.
//
// The binary dispatches on the name it was started under: as weft-cni it is
// the CNI plugin the container runtime calls; under any other name it is the
// weft command line (daemon, status, demo, ...).
package main

import (
	"os"

	"github.com/weftnet/weft/cli"
	// Started as weft-cni, the binary runs the CNI plugin from this
	// package's init and exits there, before the packages only the command
	// line needs initialize.
	_ "github.com/weftnet/weft/cniplugin/cnimain"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
