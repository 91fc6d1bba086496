//go:build !linux

package policy

import "errors"

var errNotLinux = errors.New("network policy enforcement needs Linux nftables")

// Applier is a stub: nftables exists only on Linux.
type Applier struct{}

// NewApplier returns a stub applier.
func NewApplier(Config) *Applier { return &Applier{} }

// Apply fails: nftables exists only on Linux.
func (a *Applier) Apply(RuleSet) error { return errNotLinux }

// Sync fails: nftables exists only on Linux.
func (a *Applier) Sync() error { return errNotLinux }

// Remove does nothing.
func (a *Applier) Remove() error { return nil }

// Writes is always 0.
func (a *Applier) Writes() uint64 { return 0 }

// Drops fails: nftables exists only on Linux.
func (a *Applier) Drops() ([]DropCount, error) { return nil, errNotLinux }
