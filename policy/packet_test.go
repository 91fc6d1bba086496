package policy

import (
	"testing"
)

func ipv4Packet(proto byte, src, dst [4]byte, frag uint16, payload ...byte) []byte {
	b := []byte{0x45, 0, 0, 0, 0, 0, byte(frag >> 8), byte(frag), 64, proto, 0, 0}
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	return append(b, payload...)
}

func ipv6Packet(next byte, payload ...byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	b[6] = next
	b[8], b[23] = 0xfd, 1  // fd00::1
	b[24], b[39] = 0xfd, 2 // fd00::2
	return append(b, payload...)
}

func TestParsePacket(t *testing.T) {
	ports := []byte{0x30, 0x39, 0x00, 0x50} // 12345 -> 80
	tests := []struct {
		name string
		b    []byte
		want string // Packet.String, or "error"
	}{
		{"tcp4", ipv4Packet(6, [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, 0, ports...), "10.0.0.1 -> 10.0.0.2 tcp/80"},
		{"udp4", ipv4Packet(17, [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, 0, ports...), "10.0.0.1 -> 10.0.0.2 udp/80"},
		{"sctp4", ipv4Packet(132, [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, 0, ports...), "10.0.0.1 -> 10.0.0.2 sctp/80"},
		{"icmp4", ipv4Packet(1, [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, 0, 8, 0, 0, 0), "10.0.0.1 -> 10.0.0.2 icmp/0"},
		{"later fragment", ipv4Packet(6, [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, 185, ports...), "10.0.0.1 -> 10.0.0.2 tcp/0"},
		{"truncated tcp", ipv4Packet(6, [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, 0, 1), "10.0.0.1 -> 10.0.0.2 tcp/0"},
		{"tcp6", ipv6Packet(6, ports...), "fd00::1 -> fd00::2 tcp/80"},
		{"tcp6 after hop-by-hop and fragment", ipv6Packet(0, append([]byte{44, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 1}, ports...)...), "fd00::1 -> fd00::2 tcp/80"},
		{"empty", nil, "error"},
		{"version 5", []byte{0x50}, "error"},
		{"short ipv4", []byte{0x45, 0}, "error"},
		{"short ipv6 extension", ipv6Packet(0, 6, 1), "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePacket(tt.b)
			got := "error"
			if err == nil {
				got = p.String()
			}
			if got != tt.want {
				t.Errorf("got %s (%v), want %s", got, err, tt.want)
			}
		})
	}
}

func FuzzParsePacket(f *testing.F) {
	f.Add(ipv4Packet(6, [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, 0, 0, 1, 0, 80))
	f.Add(ipv6Packet(0, 44, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 53))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePacket(b)
		if err == nil && (!p.Src.IsValid() || !p.Dst.IsValid()) {
			t.Fatalf("parsed %v without addresses", p)
		}
	})
}

func TestLogPrefix(t *testing.T) {
	for _, dir := range []Direction{Ingress, Egress} {
		dir2, pod, ok := ParseLogPrefix(LogPrefix(dir, "ns/pod-1"))
		if !ok || dir2 != dir || pod != "ns/pod-1" {
			t.Errorf("round trip of %s: %v %q %v", dir, dir2, pod, ok)
		}
	}
	for _, bad := range []string{"", "weft drop ", "weft drop sideways ns/p: ", "other ingress ns/p: "} {
		if _, _, ok := ParseLogPrefix(bad); ok {
			t.Errorf("ParseLogPrefix(%q) succeeded", bad)
		}
	}
}
