package crypto

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"golang.org/x/crypto/hkdf"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// MinSecretLen is the shortest cluster secret accepted, in bytes after
// decoding.
const MinSecretLen = 16

// createSecretHint tells the operator how to make a good secret.
const createSecretHint = "create one with: head -c 32 /dev/urandom | base64 > /etc/weft/secret"

// HKDF parameters. They are part of the wire contract: every node of a
// cluster must derive the same keys from the same secret, so changing any of
// these strings is a breaking change for mixed-version clusters.
const (
	// hkdfSalt is the fixed HKDF-Extract salt for every key weft derives.
	hkdfSalt = "weft cluster secret v1"
	// gossipKeyInfo is the HKDF-Expand info (label) of the gossip key.
	gossipKeyInfo = "weft gossip key v1"
	// presharedKeyInfo is the HKDF-Expand info (label) of the WireGuard
	// preshared key.
	presharedKeyInfo = "weft wireguard preshared key v1"
)

// ErrSecretTooShort is returned (wrapped) by ReadSecret for a secret shorter
// than MinSecretLen bytes.
var ErrSecretTooShort = errors.New("cluster secret too short")

// Secret is the cluster secret shared by every node. Its String and LogValue
// methods redact it, so printing or logging one by mistake leaks nothing.
type Secret []byte

// ReadSecret reads the cluster secret from path. The file holds either base64
// text (as made by `head -c 32 /dev/urandom | base64`) or raw bytes:
// surrounding white space is trimmed, and content that is valid standard
// base64 (padded or not; line breaks allowed) is decoded, anything else is
// used as it is. The result must be at least MinSecretLen bytes long. Errors
// name the file but never contain its content.
func ReadSecret(path string) (Secret, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read cluster secret: %w; %s", err, createSecretHint)
	}
	s, err := parseSecret(data)
	if err != nil {
		return nil, fmt.Errorf("cluster secret %s: %w", path, err)
	}
	return s, nil
}

// parseSecret decodes the content of a secret file (see ReadSecret).
func parseSecret(data []byte) (Secret, error) {
	text := bytes.TrimSpace(data)
	s := Secret(text)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(string(text)); err == nil {
			s = b
			break
		}
	}
	if len(s) < MinSecretLen {
		return nil, fmt.Errorf("%w: %d bytes after decoding, need at least %d; %s",
			ErrSecretTooShort, len(s), MinSecretLen, createSecretHint)
	}
	return bytes.Clone(s), nil
}

// String redacts the secret.
func (s Secret) String() string { return "[redacted]" }

// GoString redacts the secret from %#v.
func (s Secret) GoString() string { return "crypto.Secret([redacted])" }

// LogValue redacts the secret from slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// GossipKey returns the 32-byte key for memberlist's AES-256 keyring:
// HKDF-SHA256(secret, salt "weft cluster secret v1", info "weft gossip key v1").
func (s Secret) GossipKey() []byte {
	return s.derive(gossipKeyInfo, 32)
}

// PresharedKey returns the WireGuard preshared key used with every peer:
// HKDF-SHA256(secret, salt "weft cluster secret v1",
// info "weft wireguard preshared key v1"), 32 bytes.
func (s Secret) PresharedKey() wgtypes.Key {
	var k wgtypes.Key
	copy(k[:], s.derive(presharedKeyInfo, wgtypes.KeyLen))
	return k
}

// derive expands n bytes of key material for one label.
func (s Secret) derive(info string, n int) []byte {
	out := make([]byte, n)
	r := hkdf.New(sha256.New, s, []byte(hkdfSalt), []byte(info))
	if _, err := io.ReadFull(r, out); err != nil {
		// HKDF-SHA256 yields up to 255*32 bytes; n is a small constant.
		panic("crypto: hkdf: " + err.Error())
	}
	return out
}

// fingerprintInfo is the HKDF-Expand info of a secret's fingerprint.
const fingerprintInfo = "weft secret fingerprint v1"

// Fingerprint names the secret without revealing it: 16 hex digits of
// HKDF-SHA256 under its own label. Nodes announce the fingerprints of the
// secrets they hold, so that they agree on keys while a secret is rotated.
func (s Secret) Fingerprint() string {
	return hex.EncodeToString(s.derive(fingerprintInfo, 8))
}

// Equal reports whether s and o are the same secret, in constant time.
func (s Secret) Equal(o Secret) bool {
	return len(s) == len(o) && subtle.ConstantTimeCompare(s, o) == 1
}

// ParseSecret decodes a secret as ReadSecret does a file's content (the
// Kubernetes Secret's value, for one).
func ParseSecret(data []byte) (Secret, error) { return parseSecret(data) }
