package netlab

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// frame builds an Ethernet frame carrying an IPv4 packet.
func frame(proto byte, src, dst string, l4 []byte) []byte {
	eth := make([]byte, 14)
	binary.BigEndian.PutUint16(eth[12:], 0x0800)
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	ip[8] = 64
	ip[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	return append(append(eth, ip...), l4...)
}

func udp(sport, dport uint16, payload string) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return append(h, payload...)
}

func tcp(sport, dport uint16, payload string) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	h[12] = 5 << 4
	return append(h, payload...)
}

func TestLabParseFrame(t *testing.T) {
	arp := make([]byte, 14+28)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	copy(arp[14+14:], []byte{172, 30, 0, 1})
	copy(arp[14+24:], []byte{172, 30, 0, 2})
	// Ethernet pads short frames; the IP total length says where to stop.
	padded := append(frame(17, "172.30.0.1", "172.30.0.2", udp(1, 2, "x")), 0, 0, 0, 0)

	tests := []struct {
		name         string
		in           []byte
		proto        string
		src, dst     string
		sport, dport uint16
		payload      string
	}{
		{"udp", frame(17, "172.30.0.1", "172.30.0.2", udp(40000, 6784, "hello")), ProtoUDP, "172.30.0.1", "172.30.0.2", 40000, 6784, "hello"},
		{"tcp", frame(6, "172.30.1.1", "172.30.0.3", tcp(6783, 5555, "gossip")), ProtoTCP, "172.30.1.1", "172.30.0.3", 6783, 5555, "gossip"},
		{"icmp", frame(1, "10.0.0.1", "10.0.0.2", []byte{8, 0, 0, 0}), ProtoICMP, "10.0.0.1", "10.0.0.2", 0, 0, "\x08\x00\x00\x00"},
		{"arp", arp, ProtoARP, "172.30.0.1", "172.30.0.2", 0, 0, ""},
		{"padding", padded, ProtoUDP, "172.30.0.1", "172.30.0.2", 1, 2, "x"},
		{"short", []byte{1, 2, 3}, ProtoOther, "invalid IP", "invalid IP", 0, 0, ""},
		{"truncated ip", frame(17, "1.2.3.4", "5.6.7.8", nil)[:20], ProtoOther, "invalid IP", "invalid IP", 0, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ParseFrame(tt.in)
			if p.Proto != tt.proto || p.Src.String() != tt.src || p.Dst.String() != tt.dst ||
				p.SrcPort != tt.sport || p.DstPort != tt.dport || string(p.Payload) != tt.payload {
				t.Errorf("got %s %s:%d > %s:%d %q", p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort, p.Payload)
			}
		})
	}
}

func TestLabWritePcap(t *testing.T) {
	var b bytes.Buffer
	pkts := []Packet{ParseFrame(frame(17, "1.1.1.1", "2.2.2.2", udp(1, 2, "abc")))}
	if err := WritePcap(&b, pkts); err != nil {
		t.Fatal(err)
	}
	if got, want := b.Len(), 24+16+len(pkts[0].Data); got != want {
		t.Errorf("pcap of %d bytes, want %d", got, want)
	}
	if binary.LittleEndian.Uint32(b.Bytes()) != 0xa1b23c4d {
		t.Error("bad magic")
	}
}

func FuzzParseFrame(f *testing.F) {
	f.Add(frame(17, "172.30.0.1", "172.30.0.2", udp(1, 6784, "x")))
	f.Add(frame(6, "172.30.0.1", "172.30.0.2", tcp(1, 6783, "y")))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p := ParseFrame(b)
		if len(p.Payload) > 0 && !bytes.Contains(b, p.Payload) {
			t.Fatal("payload is not part of the frame")
		}
	})
}
