package crypto

import (
	"bufio"
	"strings"
)

// handoverKeys are the UAPI keys of a device's "get" answer that a new
// device is "set" with: the peers and how to reach them. The private key is
// left out (the successor reads it from the state directory), and so are
// the listen port (set from its own config), counters and handshake times.
var handoverKeys = map[string]bool{
	"public_key":                    true,
	"preshared_key":                 true,
	"protocol_version":              true,
	"endpoint":                      true,
	"persistent_keepalive_interval": true,
	"allowed_ip":                    true,
}

// handoverPeers turns a UAPI "get" answer into the "set" operations that
// give a new device the same peers.
func handoverPeers(get string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(get))
	for sc.Scan() {
		k, _, ok := strings.Cut(sc.Text(), "=")
		if ok && handoverKeys[k] {
			b.WriteString(sc.Text())
			b.WriteByte('\n')
		}
	}
	return b.String()
}
