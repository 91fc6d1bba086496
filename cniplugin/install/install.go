// Package install puts the weft CNI plugin where a container runtime finds
// it: the binary as BIN_DIR/weft-cni and the network config
// CONF_DIR/10-weft.conflist, both atomically. It lives apart from the plugin
// so that a plugin call never waits for the packages it needs to
// ask chained plugins for their versions to initialize (libcni's invoke pulls in net/http
// and OpenTelemetry).
package install

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"

	"github.com/weftnet/weft/cniplugin"
	"github.com/weftnet/weft/internal/atomicfile"
)

// NetworkName is the "name" of the weft network in the conflist.
const NetworkName = "weft"

// Defaults of Config.
const (
	DefaultBinDir  = "/opt/cni/bin"
	DefaultConfDir = "/etc/cni/net.d"
)

// Versions the conflist offers: the base one every runtime we support
// reads (containerd 1.6/1.7 fail every ADD of a 1.1.0-only conflist), and
// 1.1.0 (STATUS, GC) for runtimes that know it, when the whole chain does.
const (
	conflistBaseVersion = "1.0.0"
	conflistNewVersion  = "1.1.0"
)

// chained are the plugins that follow weft-cni in the conflist.
var chained = []string{"portmap"}

// versionTimeout bounds the VERSION call to each chained plugin.
const versionTimeout = 10 * time.Second

// Config says where Install puts the plugin and its config.
type Config struct {
	// BinDir is where the runtime looks for plugins; default DefaultBinDir.
	BinDir string
	// ConfDir is where the runtime looks for network configs; default
	// DefaultConfDir.
	ConfDir string
	// Socket is the daemon's API socket written into the config; default
	// cniplugin.DefaultSocket.
	Socket string
	// MTU is written into the config; 0 (the default) lets the daemon
	// choose.
	MTU int
	// Source is the binary copied to BIN_DIR/weft-cni; default the running
	// executable.
	Source string
	// Log receives warnings (a chained plugin missing); default discards.
	Log *slog.Logger
}

// Result says what Install wrote.
type Result struct {
	Binary      string   // BIN_DIR/weft-cni
	Conflist    string   // CONF_DIR/10-weft.conflist
	CNIVersions []string // the conflist's "cniVersions"
	Chained     []string // the plugins chained after weft-cni
}

// testHookBeforeRename, when set by tests, runs after a temporary file is
// complete and before it is renamed over dst.
var testHookBeforeRename func(tmp, dst string)

// Install copies the plugin binary to BIN_DIR/weft-cni and writes
// CONF_DIR/10-weft.conflist, both atomically (a complete temporary file in
// the same directory, synced, then renamed), so a runtime never executes or
// reads half a file. The conflist lists cniVersion 1.1.0 only when every
// chained plugin in BIN_DIR supports it. A chained plugin missing from
// BIN_DIR is left out of the chain with a warning, so that pods still start.
// Install is safe to run again; the daemon runs it at start.
func Install(ctx context.Context, cfg Config) (Result, error) {
	cfg = cfg.withDefaults()
	var res Result
	src := cfg.Source
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			return res, fmt.Errorf("find the running binary to install: %w", err)
		}
		src = exe
	}
	for _, dir := range []string{cfg.BinDir, cfg.ConfDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return res, fmt.Errorf("create %s: %w", dir, err)
		}
	}

	res.Binary = filepath.Join(cfg.BinDir, cniplugin.BinaryName)
	if err := installBinary(src, res.Binary); err != nil {
		return res, err
	}

	data, versions, chain, err := conflist(ctx, cfg)
	if err != nil {
		return res, err
	}
	res.CNIVersions, res.Chained = versions, chain
	res.Conflist = filepath.Join(cfg.ConfDir, cniplugin.ConflistName)
	if old, err := os.ReadFile(res.Conflist); err == nil && bytes.Equal(old, data) {
		// Unchanged: spare the runtimes watching the directory a reload.
		return res, nil
	}
	err = writeAtomic(res.Conflist, 0o644, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	return res, err
}

// Conflist renders the network config Install writes for cfg: it asks the
// chained plugins in cfg.BinDir for their versions, as Install does.
func Conflist(ctx context.Context, cfg Config) ([]byte, error) {
	data, _, _, err := conflist(ctx, cfg.withDefaults())
	return data, err
}

func conflist(ctx context.Context, cfg Config) (data []byte, versions, chain []string, err error) {
	versions = []string{conflistBaseVersion, conflistNewVersion}
	for _, name := range chained {
		path := filepath.Join(cfg.BinDir, name)
		if _, err := os.Stat(path); err != nil {
			cfg.Log.Warn("chained plugin not installed; leaving it out of the weft network config (hostPort will not work until it is installed and install-cni runs again)",
				"plugin", name, "bin-dir", cfg.BinDir)
			continue
		}
		chain = append(chain, name)
		if ok, err := supports(ctx, path, conflistNewVersion); !ok {
			cfg.Log.Warn("chained plugin lacks CNI "+conflistNewVersion+"; the network config offers "+conflistBaseVersion+" only (no STATUS or GC)",
				"plugin", name, "err", err)
			versions = []string{conflistBaseVersion}
		}
	}
	data, err = renderConflist(cfg, versions, chain)
	return data, versions, chain, err
}

func (c Config) withDefaults() Config {
	if c.BinDir == "" {
		c.BinDir = DefaultBinDir
	}
	if c.ConfDir == "" {
		c.ConfDir = DefaultConfDir
	}
	if c.Socket == "" {
		c.Socket = cniplugin.DefaultSocket
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// supports asks the plugin at path for VERSION and tells whether it
// speaks version.
func supports(ctx context.Context, path, version string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	info, err := invoke.GetVersionInfo(ctx, path, nil)
	if err != nil {
		return false, fmt.Errorf("ask %s for VERSION: %w", path, err)
	}
	if !slices.Contains(info.SupportedVersions(), version) {
		return false, fmt.Errorf("%s supports %v", path, info.SupportedVersions())
	}
	return true, nil
}

// The conflist's entries, in the order they are written.
type (
	conflistFile struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
		Name        string   `json:"name"`
		Plugins     []any    `json:"plugins"`
	}
	weftEntry struct {
		Type   string `json:"type"`
		Socket string `json:"socket"`
		MTU    int    `json:"mtu"`
	}
	portmapEntry struct {
		Type         string          `json:"type"`
		Capabilities map[string]bool `json:"capabilities"`
		SNAT         bool            `json:"snat"`
	}
)

func renderConflist(cfg Config, versions, chain []string) ([]byte, error) {
	f := conflistFile{
		CNIVersion:  conflistBaseVersion,
		CNIVersions: versions,
		Name:        NetworkName,
		Plugins:     []any{weftEntry{Type: cniplugin.BinaryName, Socket: cfg.Socket, MTU: cfg.MTU}},
	}
	for _, name := range chain {
		if name == "portmap" {
			f.Plugins = append(f.Plugins, portmapEntry{Type: name, Capabilities: map[string]bool{"portMappings": true}, SNAT: true})
		}
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", cniplugin.ConflistName, err)
	}
	return append(data, '\n'), nil
}

// installBinary copies src to dst atomically, executable.
func installBinary(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open the binary to install: %w", err)
	}
	defer in.Close()
	return writeAtomic(dst, 0o755, func(w io.Writer) error {
		if _, err := io.Copy(w, in); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		return nil
	})
}

// writeAtomic writes dst atomically (see package atomicfile), so a runtime
// never reads or executes half a file.
func writeAtomic(dst string, mode os.FileMode, write func(io.Writer) error) error {
	return atomicfile.Writer{BeforeRename: testHookBeforeRename}.Write(dst, mode, write)
}
