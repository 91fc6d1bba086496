// Package cryptotest provides an in-memory fake of crypto.WGClient, for unit
// tests of code that configures WireGuard devices (the daemon's peer
// reconciler) without root, kernel or wireguard-go.
//
// The fake applies wgtypes.Config as WireGuard does (checked against
// wireguard-go by crypto's root tests): keys, port and mark are set when
// given, ReplacePeers drops every peer first, a peer is removed, updated or
// (unless UpdateOnly) created, and an allowed IP belongs to one peer at a
// time: adding it to a peer takes it from any other.
package cryptotest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WGClient is a fake crypto.WGClient holding devices in memory. It is safe
// for concurrent use. Device returns copies; callers own them.
type WGClient struct {
	mu      sync.Mutex
	devices map[string]*wgtypes.Device
	err     error
	closed  bool
	calls   int
}

// NewWGClient returns a fake with an empty userspace device for each name.
func NewWGClient(names ...string) *WGClient {
	c := &WGClient{devices: make(map[string]*wgtypes.Device)}
	for _, name := range names {
		c.devices[name] = &wgtypes.Device{Name: name, Type: wgtypes.Userspace}
	}
	return c
}

// SetError makes every later call fail with err (nil to stop failing), to
// test how callers handle a broken device.
func (c *WGClient) SetError(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

// Update lets a test change a device directly, for example to record a
// handshake: f runs under the fake's lock on the device itself.
func (c *WGClient) Update(name string, f func(*wgtypes.Device)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	dev, ok := c.devices[name]
	if !ok {
		return fmt.Errorf("device %s: %w", name, os.ErrNotExist)
	}
	f(dev)
	return nil
}

// ConfigureCalls returns how many ConfigureDevice calls succeeded, to check
// that a reconciler does nothing when nothing changed.
func (c *WGClient) ConfigureCalls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// Closed reports whether Close was called.
func (c *WGClient) Closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Device returns a copy of the named device, or an error wrapping
// os.ErrNotExist as wgctrl does.
func (c *WGClient) Device(name string) (*wgtypes.Device, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return nil, err
	}
	dev, ok := c.devices[name]
	if !ok {
		return nil, fmt.Errorf("device %s: %w", name, os.ErrNotExist)
	}
	return copyDevice(dev), nil
}

// ConfigureDevice applies cfg to the named device.
func (c *WGClient) ConfigureDevice(name string, cfg wgtypes.Config) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return err
	}
	dev, ok := c.devices[name]
	if !ok {
		return fmt.Errorf("device %s: %w", name, os.ErrNotExist)
	}
	apply(dev, cfg)
	c.calls++
	return nil
}

// Close marks the client closed; later calls fail.
func (c *WGClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *WGClient) usable() error {
	if c.closed {
		return errors.New("cryptotest: WGClient is closed")
	}
	return c.err
}

// apply changes dev as WireGuard applies cfg.
func apply(dev *wgtypes.Device, cfg wgtypes.Config) {
	if cfg.PrivateKey != nil {
		dev.PrivateKey = *cfg.PrivateKey
		dev.PublicKey = cfg.PrivateKey.PublicKey()
	}
	if cfg.ListenPort != nil {
		dev.ListenPort = *cfg.ListenPort
	}
	if cfg.FirewallMark != nil {
		dev.FirewallMark = *cfg.FirewallMark
	}
	if cfg.ReplacePeers {
		dev.Peers = nil
	}
	for _, pc := range cfg.Peers {
		i := slices.IndexFunc(dev.Peers, func(p wgtypes.Peer) bool { return p.PublicKey == pc.PublicKey })
		switch {
		case pc.Remove:
			if i >= 0 {
				dev.Peers = slices.Delete(dev.Peers, i, i+1)
			}
			continue
		case i < 0 && pc.UpdateOnly:
			continue
		case i < 0:
			dev.Peers = append(dev.Peers, wgtypes.Peer{PublicKey: pc.PublicKey, ProtocolVersion: 1})
			i = len(dev.Peers) - 1
		}
		p := &dev.Peers[i]
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.Endpoint != nil {
			p.Endpoint = copyUDPAddr(pc.Endpoint)
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		for _, ipn := range pc.AllowedIPs {
			ipn = canonical(ipn)
			// An allowed IP routes to one peer: take it from the others.
			for j := range dev.Peers {
				dev.Peers[j].AllowedIPs = slices.DeleteFunc(dev.Peers[j].AllowedIPs, func(o net.IPNet) bool {
					return sameIPNet(o, ipn)
				})
			}
			p.AllowedIPs = append(p.AllowedIPs, ipn)
		}
	}
}

// canonical masks the address and uses the 4-byte form for IPv4.
func canonical(ipn net.IPNet) net.IPNet {
	ones, bits := ipn.Mask.Size()
	ip := ipn.IP.Mask(ipn.Mask)
	if ip4 := ip.To4(); ip4 != nil && bits == 32 {
		ip = ip4
	}
	return net.IPNet{IP: ip, Mask: net.CIDRMask(ones, bits)}
}

func sameIPNet(a, b net.IPNet) bool {
	return a.IP.Equal(b.IP) && slices.Equal(a.Mask, b.Mask)
}

func copyUDPAddr(a *net.UDPAddr) *net.UDPAddr {
	if a == nil {
		return nil
	}
	return &net.UDPAddr{IP: slices.Clone(a.IP), Port: a.Port, Zone: a.Zone}
}

func copyDevice(d *wgtypes.Device) *wgtypes.Device {
	out := *d
	out.Peers = make([]wgtypes.Peer, len(d.Peers))
	for i, p := range d.Peers {
		p.Endpoint = copyUDPAddr(p.Endpoint)
		ips := make([]net.IPNet, len(p.AllowedIPs))
		for j, ipn := range p.AllowedIPs {
			ips[j] = net.IPNet{IP: slices.Clone(ipn.IP), Mask: slices.Clone(ipn.Mask)}
		}
		p.AllowedIPs = ips
		out.Peers[i] = p
	}
	return &out
}
