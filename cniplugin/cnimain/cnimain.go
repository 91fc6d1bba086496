// Package cnimain runs the CNI plugin when the binary is started as
// weft-cni, from its init, and exits there.
//
// Go runs the init of every package linked into a binary before main, and
// the weft binary links client-go, the Kubernetes API types, prometheus and
// memberlist for the daemon: their inits cost a plugin call milliseconds of
// CPU, which add up when 20 pods start at once. The plugin needs none of
// them. Go initializes packages in the order of their import paths, each
// one once all of its imports are (the language spec, since Go 1.21); this
// package imports only the plugin, so its init runs as soon as the plugin's
// imports are ready, and it runs the plugin and exits there. Packages that
// are ready earlier still go first (those that need less than the plugin,
// e.g. protobuf and YAML, which do not wait for package net), but client-go,
// the API types and memberlist never initialize in a plugin call: about 210
// packages and 1 MB of allocations instead of 307 and 2.3 MB (see
// GODEBUG=inittrace=1; TestPluginSkipsDaemonInits in main_test.go keeps it
// so).
//
// main imports this package for this side effect only.
package cnimain

import (
	"os"
	"path/filepath"

	"github.com/weftnet/weft/cniplugin"
)

func init() {
	if filepath.Base(os.Args[0]) != cniplugin.BinaryName {
		return
	}
	cniplugin.Main() // exits non-zero itself on error
	os.Exit(0)
}
