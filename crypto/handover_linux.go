package crypto

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Detach ends this process's use of a userspace tunnel and returns what a
// successor process needs to take it over without losing a packet: a
// duplicate of the TUN file, which stays open so the kernel keeps queueing
// the pods' packets, and the device's peers. It stops wireguard-go, closes
// its UDP sockets and the UAPI socket as Close does; after it returns the
// caller owns the Handover and must pass it on or close its TUN file.
//
// The sessions' keys do not travel (wireguard-go cannot export them): the
// successor handshakes anew with every peer, one round trip. For a kernel
// device Detach only closes the tunnel and returns ErrNotUserspace.
func (t *Tunnel) Detach() (*Handover, error) {
	if t.dev == nil || t.tunFile == nil {
		t.Close()
		return nil, ErrNotUserspace
	}
	get, err := t.dev.IpcGet()
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("read the peers of %s: %w", t.name, err)
	}
	f, err := dupFile(t.tunFile)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("duplicate the TUN file of %s: %w", t.name, err)
	}
	// dev.Close closes the original descriptor; the duplicate keeps the
	// queue attached, so the device never sees its reader go away.
	if err := t.Close(); err != nil {
		f.Close()
		return nil, err
	}
	set, last := handoverPeers(get)
	return &Handover{Name: t.name, TUN: f, Peers: set, LastHandshake: last}, nil
}

// dupFile duplicates f's descriptor (close-on-exec) into a new *os.File.
func dupFile(f *os.File) (*os.File, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var dupErr error
	if err := sc.Control(func(fd uintptr) {
		nfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, dupErr
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}
