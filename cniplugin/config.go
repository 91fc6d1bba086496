package cniplugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// DefaultSocket is the daemon's API socket when the config names none
// (the daemon's default --run-dir plus weft.sock).
const DefaultSocket = "/run/weft/weft.sock"

// MTU bounds accepted in the config: the IPv4 minimum and the largest a
// veth takes.
const (
	MinMTU = 68
	MaxMTU = 65535
)

// maxSocketPath is the longest path a unix socket address holds (sun_path
// is 108 bytes including the terminating NUL).
const maxSocketPath = 107

// NetConf is the weft-cni entry of a network config list, as the runtime
// hands it to the plugin on stdin.
type NetConf struct {
	types.PluginConf

	// Socket is the weft daemon's API socket; DefaultSocket when empty.
	Socket string `json:"socket,omitempty"`
	// MTU of both ends of the pod's veth; 0 uses the MTU the daemon
	// hands out (the tunnel MTU).
	MTU int `json:"mtu,omitempty"`
}

// ParseConfig decodes and validates the network config of one call. It
// fills in defaults and parses prevResult when present. Errors are
// *types.Error with the CNI code that fits: 6 for what is not JSON, 7 for
// values that are wrong, 1 for a cniVersion the plugin does not speak.
func ParseConfig(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(conf); err != nil {
		return nil, decodeError(data, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, types.NewError(types.ErrDecodingFailure,
			"the network config has data after its JSON object",
			"fix the weft-cni network config (by default "+ConflistName+" in /etc/cni/net.d); `weft install-cni` rewrites it")
	}
	if err := conf.validate(); err != nil {
		return nil, err
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure,
				fmt.Sprintf("cannot parse prevResult of the network config: %v", err),
				"the runtime passed a malformed previous result; this is a bug in the runtime or an earlier plugin")
		}
	}
	return conf, nil
}

func (c *NetConf) validate() *types.Error {
	if c.CNIVersion == "" {
		return configError("cniVersion is missing",
			`add "cniVersion": "1.0.0" to the network config`)
	}
	if !slices.Contains(SupportedVersions.SupportedVersions(), c.CNIVersion) {
		return types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("cniVersion %q is not supported by weft-cni", c.CNIVersion),
			"use one of "+strings.Join(SupportedVersions.SupportedVersions(), ", "))
	}
	if c.Name == "" {
		return configError("the network config has no name", `add "name": "weft"`)
	}
	switch {
	case c.Socket == "":
		c.Socket = DefaultSocket
	case !filepath.IsAbs(c.Socket):
		return configError(fmt.Sprintf("socket %q is not an absolute path", c.Socket),
			`set "socket" to the daemon's socket, by default `+DefaultSocket)
	case len(c.Socket) > maxSocketPath:
		return configError(fmt.Sprintf("socket path is %d bytes long, more than a unix socket takes (%d)", len(c.Socket), maxSocketPath),
			"move the daemon's --run-dir to a shorter path")
	case strings.ContainsRune(c.Socket, 0):
		return configError("socket contains a NUL byte", `set "socket" to the daemon's socket, by default `+DefaultSocket)
	}
	if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU) {
		return configError(fmt.Sprintf("mtu %d is out of range", c.MTU),
			fmt.Sprintf("use 0 to take the daemon's tunnel MTU, or a value from %d to %d", MinMTU, MaxMTU))
	}
	return nil
}

func configError(msg, hint string) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "invalid weft-cni network config: "+msg, hint)
}

// decodeError turns a JSON error into a CNI error that says where the
// config is wrong.
func decodeError(data []byte, err error) *types.Error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "the config"
		}
		return configError(fmt.Sprintf("%s must be %s, not a JSON %s", field, jsonKind(typ.Type.Kind().String()), typ.Value),
			"fix the value in the weft-cni network config")
	case errors.As(err, &syn):
		return types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("the network config is not valid JSON (at byte %d of %d): %v", syn.Offset, len(data), err),
			"fix the weft-cni network config (by default "+ConflistName+" in /etc/cni/net.d); `weft install-cni` rewrites it")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return types.NewError(types.ErrDecodingFailure,
			"the network config is empty or cut short",
			"the runtime must pass the network config on stdin")
	default:
		return types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("cannot decode the network config: %v", err),
			"fix the weft-cni network config")
	}
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int64", "uint", "uint32", "float64":
		return "a whole number"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "map", "struct":
		return "an object"
	case "slice":
		return "a list"
	}
	return "a " + goKind
}

// podArgs are the keys of CNI_ARGS weft uses. Runtimes send them in any
// order together with keys weft does not know.
type podArgs struct {
	Namespace string
	Name      string
}

// parseCNIArgs reads K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS
// ("K=V;K=V"), ignoring every other key and anything malformed.
func parseCNIArgs(s string) podArgs {
	var p podArgs
	for kv := range strings.SplitSeq(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		}
	}
	return p
}

// gcAttachments reads the valid attachments of a GC call. The key
// "cni.dev/valid-attachments" must be there (the spec's first draft called
// it "cni.dev/attachments", which is read too): without it GC would release
// every pod of the node, so it is an error. An empty or null list is valid
// and means that no attachment is.
func gcAttachments(data []byte) ([]types.GCAttachment, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, decodeError(data, err)
	}
	for _, key := range []string{"cni.dev/valid-attachments", "cni.dev/attachments"} {
		v, ok := raw[key]
		if !ok {
			continue
		}
		var valid []types.GCAttachment
		if err := json.Unmarshal(v, &valid); err != nil {
			return nil, configError(fmt.Sprintf("%s is not a list of attachments: %v", key, err),
				"the runtime must send a list of {\"containerID\", \"ifname\"}")
		}
		return valid, nil
	}
	return nil, configError("GC without cni.dev/valid-attachments",
		"the runtime must list the attachments that are still valid; weft-cni refuses to release every pod of the node")
}
