package crypto

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rfc5869 is a slow, obviously right HKDF-SHA256 written from RFC 5869
// section 2, to check the library call against.
func rfc5869(ikm, salt, info []byte, n int) []byte {
	if len(salt) == 0 {
		salt = make([]byte, sha256.Size)
	}
	mac := hmac.New(sha256.New, salt)
	mac.Write(ikm)
	prk := mac.Sum(nil) // HKDF-Extract

	var okm, t []byte // HKDF-Expand
	for i := byte(1); len(okm) < n; i++ {
		mac := hmac.New(sha256.New, prk)
		mac.Write(t)
		mac.Write(info)
		mac.Write([]byte{i})
		t = mac.Sum(nil)
		okm = append(okm, t...)
	}
	return okm[:n]
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRFC5869ReferenceMatchesTheRFC(t *testing.T) {
	// RFC 5869, appendix A.1 (test case 1).
	ikm := unhex(t, "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b")
	salt := unhex(t, "000102030405060708090a0b0c")
	info := unhex(t, "f0f1f2f3f4f5f6f7f8f9")
	want := "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
	if got := hex.EncodeToString(rfc5869(ikm, salt, info, 42)); got != want {
		t.Fatalf("reference HKDF = %s, want %s", got, want)
	}
}

// testSecret is the fixed secret of the test vectors: bytes 0x00..0x1f.
func testSecret() Secret {
	s := make(Secret, 32)
	for i := range s {
		s[i] = byte(i)
	}
	return s
}

func TestDerivationVectors(t *testing.T) {
	s := testSecret()
	psk := s.PresharedKey()
	for _, tc := range []struct {
		name, info, want string
		got              []byte
	}{
		{"gossip", gossipKeyInfo, "b82b51e26177e1d4190b7aefc6875b8514da5f76f60b8d3bd65ae3ea07517f5d", s.GossipKey()},
		{"preshared", presharedKeyInfo, "a4bb7b3092a7d9ae89b9673748d180028937fb5fbeab4ab3c6b1ff155fb412a4", psk[:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := hex.EncodeToString(tc.got); got != tc.want {
				t.Errorf("key = %s, want %s", got, tc.want)
			}
			ref := rfc5869(s, []byte(hkdfSalt), []byte(tc.info), 32)
			if !bytes.Equal(tc.got, ref) {
				t.Errorf("key = %x, RFC 5869 reference gives %x", tc.got, ref)
			}
		})
	}
}

func TestDerivationsDiffer(t *testing.T) {
	a := testSecret()
	b := testSecret()
	b[0] ^= 1
	psk := func(s Secret) []byte { k := s.PresharedKey(); return k[:] }
	keys := map[string][]byte{
		"gossip(a)":    a.GossipKey(),
		"preshared(a)": psk(a),
		"gossip(b)":    b.GossipKey(),
		"preshared(b)": psk(b),
	}
	seen := map[string]string{}
	for name, k := range keys {
		if len(k) != 32 {
			t.Errorf("%s is %d bytes, want 32", name, len(k))
		}
		if other, ok := seen[string(k)]; ok {
			t.Errorf("%s == %s", name, other)
		}
		seen[string(k)] = name
	}
	if !bytes.Equal(a.GossipKey(), a.GossipKey()) {
		t.Error("derivation is not deterministic")
	}
}

func TestSecretIsRedacted(t *testing.T) {
	s := Secret("0123456789abcdef-very-secret")
	for _, format := range []string{"%v", "%s", "%x", "%#v", "%q"} {
		out := fmt.Sprintf(format, s)
		if strings.Contains(out, "very-secret") || strings.Contains(out, hex.EncodeToString(s)) {
			t.Errorf("%s prints the secret: %s", format, out)
		}
	}
}

func TestReadSecret(t *testing.T) {
	random32 := testSecret()
	b64 := base64.StdEncoding.EncodeToString(random32)
	long := bytes.Repeat([]byte{0xab}, 64)
	for _, tc := range []struct {
		name     string
		content  []byte
		want     []byte
		tooShort bool
	}{
		{"base64 with newline", []byte(b64 + "\n"), random32, false},
		{"base64 with spaces", []byte("  \t" + b64 + " \r\n"), random32, false},
		{"base64 unpadded", []byte(strings.TrimRight(base64.StdEncoding.EncodeToString(random32[:31]), "=")), random32[:31], false},
		{"base64 wrapped like base64(1)", []byte(wrap(base64.StdEncoding.EncodeToString(long), 76)), long, false},
		{"raw bytes", random32, random32, false},
		{"raw passphrase", []byte("correct horse battery staple\n"), []byte("correct horse battery staple"), false},
		{"raw too short", []byte("short!\n"), nil, true},
		{"base64 too short", []byte(base64.StdEncoding.EncodeToString(random32[:15])), nil, true},
		{"empty", nil, nil, true},
		{"white space only", []byte(" \n\t "), nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ReadSecret(path)
			if tc.tooShort {
				if !errors.Is(err, ErrSecretTooShort) {
					t.Fatalf("err = %v, want ErrSecretTooShort", err)
				}
				msg := err.Error()
				for _, want := range []string{path, "head -c 32 /dev/urandom | base64"} {
					if !strings.Contains(msg, want) {
						t.Errorf("error %q does not mention %q", msg, want)
					}
				}
				if trimmed := strings.TrimSpace(string(tc.content)); trimmed != "" && strings.Contains(msg, trimmed) {
					t.Errorf("error %q contains the secret", msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("secret = %x, want %x", []byte(got), tc.want)
			}
		})
	}
}

func wrap(s string, n int) string {
	var b strings.Builder
	for len(s) > n {
		b.WriteString(s[:n] + "\n")
		s = s[n:]
	}
	b.WriteString(s + "\n")
	return b.String()
}

func TestReadSecretMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope")
	_, err := ReadSecret(path)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want fs.ErrNotExist", err)
	}
	for _, want := range []string{path, "head -c 32 /dev/urandom | base64"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func FuzzParseSecret(f *testing.F) {
	f.Add([]byte(base64.StdEncoding.EncodeToString(testSecret()) + "\n"))
	f.Add([]byte("correct horse battery staple"))
	f.Add([]byte{})
	f.Add([]byte("===="))
	f.Add([]byte(" \n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseSecret(data)
		if err != nil {
			if s != nil {
				t.Error("secret returned with an error")
			}
			if !errors.Is(err, ErrSecretTooShort) {
				t.Errorf("unexpected error kind: %v", err)
			}
			return
		}
		if len(s) < MinSecretLen {
			t.Errorf("accepted a %d-byte secret", len(s))
		}
		if len(data) > 0 && &s[0] == &data[0] {
			t.Error("secret aliases the input buffer")
		}
		_ = s.GossipKey()
		_ = s.PresharedKey()
	})
}
