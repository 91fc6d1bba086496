package mesh

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrInsecure is returned by SetKeys on a mesh started without a key:
// gossip in clear text cannot turn encrypted while it runs.
var ErrInsecure = errors.New("the mesh runs without a gossip key; restart the daemon with a secret to encrypt gossip")

// SetKeys makes the keyring hold exactly primary and others: gossip is
// encrypted with primary from now on, and packets encrypted with any of
// them are accepted. This is how a cluster secret is rotated without a
// restart: every node first adds the new key as one of others, then makes
// it primary once every member holds it, and finally drops the old one.
// Every key must be KeySize bytes. Safe for concurrent use.
func (m *Mesh) SetKeys(primary []byte, others ...[]byte) error {
	if m.keyring == nil {
		return ErrInsecure
	}
	want := append([][]byte{primary}, others...)
	for _, k := range want {
		if len(k) != KeySize {
			return fmt.Errorf("set gossip keys: a key of %d bytes, want %d", len(k), KeySize)
		}
	}
	for _, k := range want {
		if err := m.keyring.AddKey(k); err != nil {
			return fmt.Errorf("set gossip keys: add: %w", err)
		}
	}
	if err := m.keyring.UseKey(primary); err != nil {
		return fmt.Errorf("set gossip keys: use: %w", err)
	}
	for _, k := range m.keyring.GetKeys() {
		keep := false
		for _, w := range want {
			keep = keep || bytes.Equal(k, w)
		}
		if !keep {
			if err := m.keyring.RemoveKey(k); err != nil {
				return fmt.Errorf("set gossip keys: remove: %w", err)
			}
		}
	}
	return nil
}

// Keys returns the primary gossip key and every key held (primary first);
// nil without a key.
func (m *Mesh) Keys() (primary []byte, all [][]byte) {
	if m.keyring == nil {
		return nil, nil
	}
	return m.keyring.GetPrimaryKey(), m.keyring.GetKeys()
}
