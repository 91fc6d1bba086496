package netlab

import (
	"bytes"
	"encoding/binary"
	"io"
	"net/netip"
	"time"
)

// Proto names of Packet.Proto.
const (
	ProtoUDP   = "udp"
	ProtoTCP   = "tcp"
	ProtoICMP  = "icmp"
	ProtoARP   = "arp"
	ProtoOther = "other"
)

// Packet is one Ethernet frame seen on the underlay.
type Packet struct {
	Time  time.Time
	Iface string // bridge port it entered through (n1, r0, ...)
	Src   netip.Addr
	Dst   netip.Addr
	Proto string // ProtoUDP, ProtoTCP, ProtoICMP, ProtoARP or ProtoOther
	// SrcPort and DstPort are set for UDP and TCP.
	SrcPort, DstPort uint16
	// Data is the whole frame, from the Ethernet header; the caller owns it.
	Data []byte
	// Payload is the part after the UDP or TCP header (or after the IP
	// header for other protocols); a slice of Data.
	Payload []byte
}

// Contains reports whether pattern appears anywhere in the frame.
func (p Packet) Contains(pattern []byte) bool { return bytes.Contains(p.Data, pattern) }

// ParseFrame parses an Ethernet frame (IPv4 or IPv6 over Ethernet, ARP);
// what it cannot parse is left zero with Proto ProtoOther. It keeps frame.
func ParseFrame(frame []byte) Packet {
	p := Packet{Proto: ProtoOther, Data: frame}
	if len(frame) < 14 {
		return p
	}
	etype := binary.BigEndian.Uint16(frame[12:14])
	l3 := frame[14:]
	if etype == 0x8100 && len(frame) >= 18 { // one VLAN tag
		etype = binary.BigEndian.Uint16(frame[16:18])
		l3 = frame[18:]
	}
	var proto byte
	var l4 []byte
	switch etype {
	case 0x0806:
		p.Proto = ProtoARP
		if len(l3) >= 28 {
			p.Src, _ = netip.AddrFromSlice(l3[14:18])
			p.Dst, _ = netip.AddrFromSlice(l3[24:28])
		}
		return p
	case 0x0800:
		if len(l3) < 20 || l3[0]>>4 != 4 {
			return p
		}
		ihl := int(l3[0]&0x0f) * 4
		if ihl < 20 || len(l3) < ihl {
			return p
		}
		p.Src, _ = netip.AddrFromSlice(l3[12:16])
		p.Dst, _ = netip.AddrFromSlice(l3[16:20])
		proto = l3[9]
		end := int(binary.BigEndian.Uint16(l3[2:4]))
		if end < ihl || end > len(l3) {
			end = len(l3)
		}
		l4 = l3[ihl:end]
	case 0x86dd:
		if len(l3) < 40 {
			return p
		}
		p.Src, _ = netip.AddrFromSlice(l3[8:24])
		p.Dst, _ = netip.AddrFromSlice(l3[24:40])
		proto = l3[6] // extension headers are not followed
		l4 = l3[40:]
	default:
		return p
	}
	p.Payload = l4
	switch proto {
	case 1, 58:
		p.Proto = ProtoICMP
	case 17:
		p.Proto = ProtoUDP
		if len(l4) >= 8 {
			p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
			p.DstPort = binary.BigEndian.Uint16(l4[2:4])
			p.Payload = l4[8:]
		}
	case 6:
		p.Proto = ProtoTCP
		if len(l4) >= 20 {
			p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
			p.DstPort = binary.BigEndian.Uint16(l4[2:4])
			off := int(l4[12]>>4) * 4
			if off >= 20 && off <= len(l4) {
				p.Payload = l4[off:]
			}
		}
	}
	return p
}

// WritePcap writes packets as a pcap file (Ethernet link type), readable by
// tcpdump -r and Wireshark.
func WritePcap(w io.Writer, packets []Packet) error {
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b23c4d) // nanosecond timestamps
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535)
	binary.LittleEndian.PutUint32(hdr[20:], 1) // LINKTYPE_ETHERNET
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	rec := make([]byte, 16)
	for _, p := range packets {
		binary.LittleEndian.PutUint32(rec[0:], uint32(p.Time.Unix()))
		binary.LittleEndian.PutUint32(rec[4:], uint32(p.Time.Nanosecond()))
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(p.Data)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(p.Data)))
		if _, err := w.Write(rec); err != nil {
			return err
		}
		if _, err := w.Write(p.Data); err != nil {
			return err
		}
	}
	return nil
}
