package policy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The part of nfnetlink_log (linux/netfilter/nfnetlink_log.h) the drop log
// speaks: bind a group, ask for packet copies, read NFULNL_MSG_PACKET.
const (
	nfnlSubsysULOG      = 4
	nfulnlMsgPacket     = 0
	nfulnlMsgConfig     = 1
	nfulaCfgCmd         = 1
	nfulaCfgMode        = 2
	nfulnlCfgCmdBind    = 1
	nfulnlCfgCmdUnbind  = 2
	nfulnlCopyPacket    = 2
	nfulaPayload        = 9
	nfulaPrefix         = 10
	dropCopyRange       = 128 // enough for the IP and transport headers
	defaultRecentDrops  = 64
	defaultDropLogGroup = 87
)

// Drop is one dropped packet the kernel sampled, explained.
type Drop struct {
	Time      time.Time  `json:"time"`
	Direction Direction  `json:"direction"`
	Pod       string     `json:"pod"` // namespace/name of the policy-selected pod
	Src       netip.Addr `json:"src"`
	Dst       netip.Addr `json:"dst"`
	Proto     string     `json:"proto"`
	Port      uint16     `json:"port"`
	Reason    string     `json:"reason"`
}

// DropLogConfig says where the drop log listens and how it explains drops.
type DropLogConfig struct {
	// Group is the NFLOG group the applier logs to. Default 87 (the
	// applier's default LogGroup).
	Group uint16
	// NetNS is a file descriptor of the network namespace to listen in; 0
	// means the current one.
	NetNS int
	// Explain gives the reason of a drop, e.g. from the RuleSet in force
	// (RuleSet.Allows). Called from the drop log's goroutine. Optional.
	Explain func(Packet) string
	// Keep is how many recent drops Recent returns. Default 64.
	Keep int
	// Logger gets one line per sampled drop (the kernel rate-limits the
	// samples). Default: discard.
	Logger *slog.Logger
}

// DropLog reads the drops the applier samples to NFLOG, logs each with its
// reason and keeps the latest for status. Recent is safe for concurrent use.
type DropLog struct {
	cfg DropLogConfig

	mu     sync.Mutex
	recent []Drop // ring of the latest drops, oldest first
}

// NewDropLog makes a drop log; Run starts it.
func NewDropLog(cfg DropLogConfig) *DropLog {
	if cfg.Group == 0 {
		cfg.Group = defaultDropLogGroup
	}
	if cfg.Keep <= 0 {
		cfg.Keep = defaultRecentDrops
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &DropLog{cfg: cfg}
}

// Recent returns the latest drops, oldest first.
func (d *DropLog) Recent() []Drop {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Drop(nil), d.recent...)
}

// Run binds the NFLOG group and reads drops until ctx is done.
func (d *DropLog) Run(ctx context.Context) error {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: d.cfg.NetNS})
	if err != nil {
		return fmt.Errorf("drop log: open nfnetlink: %w", err)
	}
	defer conn.Close()
	if err := d.configure(conn, nfulnlCfgCmdBind); err != nil {
		return fmt.Errorf("drop log: bind NFLOG group %d (is another program reading it?): %w", d.cfg.Group, err)
	}
	if err := d.mode(conn); err != nil {
		return fmt.Errorf("drop log: ask NFLOG group %d for packets: %w", d.cfg.Group, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()
	for {
		msgs, err := conn.Receive()
		if ctx.Err() != nil {
			_ = d.configure(conn, nfulnlCfgCmdUnbind)
			return nil
		}
		if err != nil {
			var oe *netlink.OpError
			if errors.As(err, &oe) && errors.Is(oe.Err, unix.ENOBUFS) {
				continue // a burst overran the socket; later samples still come
			}
			return fmt.Errorf("drop log: read NFLOG group %d: %w", d.cfg.Group, err)
		}
		for _, m := range msgs {
			if drop, ok := d.decode(m); ok {
				d.record(drop)
			}
		}
	}
}

func (d *DropLog) header() []byte {
	h := []byte{unix.AF_UNSPEC, 0, 0, 0}
	binary.BigEndian.PutUint16(h[2:], d.cfg.Group)
	return h
}

func (d *DropLog) configure(conn *netlink.Conn, cmd uint8) error {
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(nfulaCfgCmd, []byte{cmd})
	return d.send(conn, ae)
}

func (d *DropLog) mode(conn *netlink.Conn) error {
	m := make([]byte, 6)
	binary.BigEndian.PutUint32(m, dropCopyRange)
	m[4] = nfulnlCopyPacket
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(nfulaCfgMode, m)
	return d.send(conn, ae)
}

func (d *DropLog) send(conn *netlink.Conn, ae *netlink.AttributeEncoder) error {
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	_, err = conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysULOG<<8 | nfulnlMsgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(d.header(), attrs...),
	})
	return err
}

// decode turns one NFLOG packet message into a Drop.
func (d *DropLog) decode(m netlink.Message) (Drop, bool) {
	if m.Header.Type != netlink.HeaderType(nfnlSubsysULOG<<8|nfulnlMsgPacket) || len(m.Data) < 4 {
		return Drop{}, false
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return Drop{}, false
	}
	var prefix string
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			prefix = ad.String()
		case nfulaPayload:
			payload = ad.Bytes()
		}
	}
	if ad.Err() != nil {
		return Drop{}, false
	}
	dir, pod, ok := ParseLogPrefix(prefix)
	if !ok {
		return Drop{}, false
	}
	pkt, err := ParsePacket(payload)
	if err != nil {
		return Drop{}, false
	}
	drop := Drop{Time: time.Now(), Direction: dir, Pod: pod, Src: pkt.Src, Dst: pkt.Dst, Proto: pkt.Proto.String(), Port: pkt.Port}
	if d.cfg.Explain != nil {
		drop.Reason = d.cfg.Explain(pkt)
	}
	return drop, true
}

func (d *DropLog) record(drop Drop) {
	d.cfg.Logger.Info("dropped by NetworkPolicy", "direction", drop.Direction.String(), "pod", drop.Pod,
		"src", drop.Src, "dst", drop.Dst, "proto", drop.Proto, "port", drop.Port, "reason", drop.Reason)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.recent = append(d.recent, drop)
	if len(d.recent) > d.cfg.Keep {
		d.recent = d.recent[len(d.recent)-d.cfg.Keep:]
	}
}
