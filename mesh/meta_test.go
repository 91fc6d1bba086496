package mesh

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func testKey(b byte) [32]byte {
	var k [32]byte
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func TestMetaRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		meta Meta
	}{
		{"empty", Meta{}},
		{"name only", Meta{Name: "node-1"}},
		{"full v4", Meta{Name: "node-1", PublicKey: testKey(1), Endpoint: "192.0.2.1:6784", TunnelAddr: netip.MustParseAddr("10.32.0.1")}},
		{"full v6", Meta{Name: "n", PublicKey: testKey(9), Endpoint: "[2001:db8::1]:6784", TunnelAddr: netip.MustParseAddr("fd00::1")}},
		{"4in6", Meta{Name: "n", TunnelAddr: netip.MustParseAddr("::ffff:10.0.0.1")}},
		{"explicit proto", Meta{Proto: ProtoVersion, Name: "x"}},
		{"probe address and NAT", Meta{Name: "n1", ProbeAddr: netip.MustParseAddr("10.32.0.2"), NATKind: "cone", Reflexive: "192.0.2.1:10001"}},
		{"rotating key and secrets", Meta{Name: "n1", PublicKey: testKey(1), NextPublicKey: testKey(2), Secrets: "0123456789abcdef,fedcba9876543210"}},
		{"long name", Meta{Name: strings.Repeat("a", 253), PublicKey: testKey(3), Endpoint: strings.Repeat("b", 200) + ":1"}},
		{"dual stack", Meta{Name: "n1", TunnelAddr: netip.MustParseAddr("10.32.0.1"), TunnelAddr6: netip.MustParseAddr("fd10:32::1")}},
		{"dual stack, everything", dualStackMeta()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.meta.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if len(b) > MaxMetaSize {
				t.Fatalf("encoded %d bytes > %d", len(b), MaxMetaSize)
			}
			got, err := DecodeMeta(b)
			if err != nil {
				t.Fatalf("DecodeMeta: %v", err)
			}
			want := tt.meta
			want.Proto = ProtoVersion
			if got != want {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestMetaEncodeErrors(t *testing.T) {
	tests := []struct {
		name string
		meta Meta
		want string
	}{
		{"too large", Meta{Name: strings.Repeat("n", 300), Endpoint: strings.Repeat("e", 300)}, "more than the 512"},
		{"other proto", Meta{Proto: 2}, "incompatible"},
		{"zone", Meta{TunnelAddr: netip.MustParseAddr("fe80::1%eth0")}, "zone"},
		{"IPv4 as IPv6 tunnel address", Meta{TunnelAddr6: netip.MustParseAddr("10.0.0.1")}, "want a plain IPv6 address"},
		{"4in6 as IPv6 tunnel address", Meta{TunnelAddr6: netip.MustParseAddr("::ffff:10.0.0.1")}, "want a plain IPv6 address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.meta.Encode()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Encode error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// field builds one raw (tag, length, value) field.
func field(tag uint64, val []byte) []byte {
	return appendField(nil, tag, val)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestDecodeMeta(t *testing.T) {
	key := testKey(7)
	tests := []struct {
		name    string
		in      []byte
		want    Meta
		wantErr string
	}{
		{"empty", nil, Meta{}, "empty"},
		{"version only", []byte{ProtoVersion}, Meta{Proto: ProtoVersion}, ""},
		{"newer major", []byte{2, 1, 1, 'x'}, Meta{}, "protocol 2"},
		{"unknown field skipped", cat([]byte{ProtoVersion}, field(tagName, []byte("a")), field(99, []byte("future")), field(tagPublicKey, key[:])),
			Meta{Proto: ProtoVersion, Name: "a", PublicKey: key}, ""},
		{"huge unknown tag skipped", cat([]byte{ProtoVersion}, field(1<<62, []byte("x"))), Meta{Proto: ProtoVersion}, ""},
		{"truncated value", cat([]byte{ProtoVersion}, field(tagName, []byte("abc"))[:4]), Meta{}, "bad length"},
		{"truncated tag", []byte{ProtoVersion, 0x80}, Meta{}, "bad field tag"},
		{"missing length", []byte{ProtoVersion, tagName}, Meta{}, "bad length"},
		{"huge length", cat([]byte{ProtoVersion, tagName}, binary.AppendUvarint(nil, 1<<63)), Meta{}, "bad length"},
		{"short key", cat([]byte{ProtoVersion}, field(tagPublicKey, key[:31])), Meta{}, "public key"},
		{"bad addr", cat([]byte{ProtoVersion}, field(tagTunnelAddr, []byte{1, 2, 3})), Meta{}, "tunnel address"},
		{"unreachable list of an older node skipped", cat([]byte{ProtoVersion}, field(5, []byte("n2,n3"))), Meta{Proto: ProtoVersion}, ""},
		{"probe address", cat([]byte{ProtoVersion}, field(tagProbeAddr, []byte{10, 32, 0, 2})), Meta{Proto: ProtoVersion, ProbeAddr: netip.MustParseAddr("10.32.0.2")}, ""},
		{"duplicate", cat([]byte{ProtoVersion}, field(tagName, []byte("a")), field(tagName, []byte("b"))), Meta{}, "twice"},
		{"too long", cat([]byte{ProtoVersion}, field(99, make([]byte, MaxMetaSize))), Meta{}, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeMeta(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("DecodeMeta error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeMeta: %v", err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if _, err := DecodeMeta([]byte{9}); !errors.Is(err, ErrIncompatibleProto) {
		t.Fatalf("DecodeMeta of another major = %v, want ErrIncompatibleProto", err)
	}
}

func FuzzDecodeMeta(f *testing.F) {
	key := testKey(1)
	full, _ := Meta{Name: "node-1", PublicKey: key, Endpoint: "192.0.2.1:6784", TunnelAddr: netip.MustParseAddr("10.32.0.1")}.Encode()
	f.Add(full)
	f.Add([]byte{ProtoVersion})
	f.Add(cat([]byte{ProtoVersion}, field(5, []byte("n2,n3"))))
	f.Add([]byte{})
	f.Add(cat([]byte{ProtoVersion}, field(99, []byte("future")), field(tagTunnelAddr, netip.MustParseAddr("fd00::1").AsSlice())))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		enc, err := m.Encode()
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", m, err)
		}
		m2, err := DecodeMeta(enc)
		if err != nil {
			t.Fatalf("cannot decode re-encoded %x: %v", enc, err)
		}
		if m2 != m {
			t.Fatalf("round trip changed meta:\n got %+v\nwant %+v", m2, m)
		}
	})
}

// dualStackMeta is the largest metadata a dual-stack node sends in
// practice: the longest node name Kubernetes allows, an IPv6 endpoint, a
// key rotation and a secret rotation under way, and NAT.
func dualStackMeta() Meta {
	return Meta{
		Name: strings.Repeat("n", 253), PublicKey: testKey(1), NextPublicKey: testKey(2),
		Endpoint:   "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
		TunnelAddr: netip.MustParseAddr("10.32.255.254"), TunnelAddr6: netip.MustParseAddr("fd10:32:ffff:ffff:ffff:ffff:ffff:fffe"),
		ProbeAddr: netip.MustParseAddr("10.32.255.253"), NATKind: "cone", Reflexive: "203.0.113.254:65535",
		Secrets: "0123456789abcdef,fedcba9876543210",
	}
}

// TestMetaSizeDualStack measures what dual stack adds to the metadata,
// which memberlist caps at 512 bytes: the IPv6 tunnel address costs 18
// bytes (the node's ranges travel in the ring, not here), and the largest
// dual-stack metadata still fits (465 bytes when this was written).
func TestMetaSizeDualStack(t *testing.T) {
	m := dualStackMeta()
	full, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	m.TunnelAddr6 = netip.Addr{}
	v4, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if d := len(full) - len(v4); d != 18 {
		t.Errorf("the IPv6 tunnel address adds %d bytes, want 18 (tag, length, 16 bytes)", d)
	}
	t.Logf("largest dual-stack metadata: %d of %d bytes", len(full), MaxMetaSize)
	if len(full) > MaxMetaSize {
		t.Errorf("largest dual-stack metadata is %d bytes, over the %d-byte cap", len(full), MaxMetaSize)
	}
}
