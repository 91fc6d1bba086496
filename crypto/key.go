package crypto

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/internal/atomicfile"
)

// PrivateKeyFile is the name of the node's WireGuard private key file inside
// the state directory.
const PrivateKeyFile = "wireguard.key"

// LoadOrCreatePrivateKey returns the node's WireGuard private key, stored in
// stateDir/wireguard.key as one line of base64 (the format of `wg genkey`).
//
// The first call creates the key and the file (mode 0600, written to a
// temporary file, synced and renamed into place; stateDir is created with mode
// 0700 if it is missing); later calls return the same key. A file that cannot
// be read or parsed is an error, never silently replaced: replacing the key is
// the operator's decision. A file readable by group or others is used, with a
// warning on logger (slog.Default() when nil).
func LoadOrCreatePrivateKey(stateDir string, logger *slog.Logger) (wgtypes.Key, error) {
	if logger == nil {
		logger = slog.Default()
	}
	path := filepath.Join(stateDir, PrivateKeyFile)
	key, err := loadPrivateKey(path, logger)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, err
	}

	if key, err = createKeyFile(stateDir, path, "WireGuard private key"); err != nil {
		return wgtypes.Key{}, err
	}
	logger.Info("created WireGuard private key", "file", path, "public_key", key.PublicKey().String())
	return key, nil
}

// loadPrivateKey reads and parses a key file. A missing file is returned as
// an error that wraps fs.ErrNotExist; the error text never contains key
// material.
func loadPrivateKey(path string, logger *slog.Logger) (wgtypes.Key, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, err
	}
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("read WireGuard private key %s: %w; fix its permissions, or move it away to create a new key (peers learn the new public key by gossip)", path, err)
	}
	key, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
	if err == nil && key == (wgtypes.Key{}) {
		err = errors.New("the key is all zeros")
	}
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("WireGuard private key file %s is corrupt (%v); move it away (mv %s %s.bad) and restart to create a new key; peers learn the new public key by gossip", path, err, path, path)
	}
	if info, err := os.Stat(path); err == nil && info.Mode().Perm()&0o077 != 0 {
		logger.Warn("WireGuard private key file is readable by others; run chmod 600 on it",
			"file", path, "mode", fmt.Sprintf("%#o", info.Mode().Perm()))
	}
	return key, nil
}

// PendingKeyFile is the name of the next private key, made by a key
// rotation and not yet in use, inside the state directory.
const PendingKeyFile = "wireguard.key.next"

// LoadPendingKey returns the pending private key of a rotation under way,
// or ok false when there is none.
func LoadPendingKey(stateDir string, logger *slog.Logger) (key wgtypes.Key, ok bool, err error) {
	if logger == nil {
		logger = slog.Default()
	}
	key, err = loadPrivateKey(filepath.Join(stateDir, PendingKeyFile), logger)
	if errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, false, nil
	}
	if err != nil {
		return wgtypes.Key{}, false, err
	}
	return key, true, nil
}

// CreatePendingKey makes a new private key and stores it as the pending
// key (mode 0600, written atomically), for a rotation to switch to later.
// An existing pending key is returned as it is: a rotation under way
// carries on with the key its peers already know.
func CreatePendingKey(stateDir string, logger *slog.Logger) (wgtypes.Key, error) {
	if key, ok, err := LoadPendingKey(stateDir, logger); err != nil || ok {
		return key, err
	}
	return createKeyFile(stateDir, filepath.Join(stateDir, PendingKeyFile), "the next WireGuard private key")
}

// createKeyFile makes a new private key and stores it at path (mode 0600,
// written atomically), creating stateDir with mode 0700 if it is missing.
func createKeyFile(stateDir, path, what string) (wgtypes.Key, error) {
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate WireGuard private key: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return wgtypes.Key{}, fmt.Errorf("create state directory %s: %w", stateDir, err)
	}
	if err := atomicfile.WriteBytes(path, 0o600, []byte(key.String()+"\n")); err != nil {
		return wgtypes.Key{}, fmt.Errorf("store %s: %w", what, err)
	}
	return key, nil
}

// CommitPendingKey makes the pending key the node's key: it renames the
// pending file over the key file (atomic: a crash leaves either the old key
// and the pending one, or the new key alone), so the old key is forgotten.
// It fails when there is no pending key.
func CommitPendingKey(stateDir string) error {
	from, to := filepath.Join(stateDir, PendingKeyFile), filepath.Join(stateDir, PrivateKeyFile)
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("switch to the next WireGuard key: %w", err)
	}
	if d, err := os.Open(stateDir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
