//go:build !linux

package crypto

import "errors"

var errNotLinux = errors.New("the WireGuard tunnel is only supported on Linux")

// OpenTunnel is only supported on Linux.
func OpenTunnel(cfg TunnelConfig) (*Tunnel, error) { return nil, errNotLinux }

// DestroyTunnel is only supported on Linux.
func DestroyTunnel(name string) error { return errNotLinux }

// Detach is only supported on Linux.
func (t *Tunnel) Detach() (*Handover, error) { return nil, errNotLinux }
