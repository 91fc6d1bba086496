package crypto

import (
	"bufio"
	"strconv"
	"strings"
	"time"
)

// handshakeGap is how long after a peer's last handshake a successor waits
// before its own: a responder drops an initiation that comes within 20 ms
// of the one before from the same peer ("handshake flood"), and one whose
// timestamp (whitened to 2^24 ns) is not newer, and the initiator then
// retries only after 5 s.
const handshakeGap = 30 * time.Millisecond

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
// give a new device the same peers, and returns the latest handshake of any
// peer (zero if none).
func handoverPeers(get string) (set string, lastHandshake time.Time) {
	var b strings.Builder
	var sec int64
	sc := bufio.NewScanner(strings.NewReader(get))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		switch {
		case !ok:
		case handoverKeys[k]:
			b.WriteString(sc.Text())
			b.WriteByte('\n')
		case k == "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case k == "last_handshake_time_nsec":
			nsec, _ := strconv.ParseInt(v, 10, 64)
			if t := time.Unix(sec, nsec); sec != 0 && t.After(lastHandshake) {
				lastHandshake = t
			}
		}
	}
	return b.String(), lastHandshake
}
