// Package version holds the build's version and commit, set by the linker
// (-X github.com/weftnet/weft/version.Version=...).
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at link time by the Makefile; the defaults mark an unreleased build.
var (
	Version = "dev"
	Commit  = ""
)

// CommitOrBuildInfo returns the commit set at link time, else the VCS
// revision Go recorded in the binary, else "unknown".
func CommitOrBuildInfo() string {
	if Commit != "" {
		return Commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// String is the one-line version used by `weft version` and in logs.
func String() string {
	return fmt.Sprintf("weft %s (commit %s, %s, %s/%s)", Version, CommitOrBuildInfo(),
		runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
