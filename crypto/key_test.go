package crypto

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestLoadOrCreatePrivateKeyIsStable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // does not exist yet
	first, err := LoadOrCreatePrivateKey(dir, discardLogger())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if first == (wgtypes.Key{}) {
		t.Fatal("created an all-zero key")
	}
	second, err := LoadOrCreatePrivateKey(dir, discardLogger())
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if first != second {
		t.Fatal("reloading returned a different key")
	}

	path := filepath.Join(dir, PrivateKeyFile)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o600 {
		t.Errorf("key file mode = %#o, want 0600", got)
	}
	dinfo, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := dinfo.Mode().Perm(); got != 0o700 {
		t.Errorf("state dir mode = %#o, want 0700", got)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := first.String() + "\n"; string(data) != want {
		t.Errorf("key file is not one line of base64 like wg genkey")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("state dir holds %d entries, want only the key (temporary file left behind?)", len(entries))
	}
}

func TestLoadPrivateKeyWrittenByWgGenkey(t *testing.T) {
	dir := t.TempDir()
	want, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, PrivateKeyFile)
	if err := os.WriteFile(path, []byte("  "+want.String()+"\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadOrCreatePrivateKey(dir, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatal("did not load the existing key")
	}
}

func TestLoadPrivateKeyCorrupt(t *testing.T) {
	for _, tc := range []struct{ name, content string }{
		{"not base64", "this is not a key\n"},
		{"wrong length", "c2hvcnQ=\n"},
		{"empty", ""},
		{"all zeros", wgtypes.Key{}.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, PrivateKeyFile)
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreatePrivateKey(dir, discardLogger())
			if err == nil {
				t.Fatal("corrupt key file accepted")
			}
			msg := err.Error()
			for _, want := range []string{path, "move it away", "gossip"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not mention %q", msg, want)
				}
			}
			data, err := os.ReadFile(path)
			if err != nil || string(data) != tc.content {
				t.Error("corrupt key file was modified")
			}
		})
	}
}

func TestLoadPrivateKeyUnreadable(t *testing.T) {
	dir := t.TempDir()
	// A directory where the file should be cannot be read as a key.
	path := filepath.Join(dir, PrivateKeyFile)
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreatePrivateKey(dir, discardLogger())
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("err = %v, want an error naming %s", err, path)
	}
}

func TestLoadPrivateKeyWarnsOnLooseMode(t *testing.T) {
	dir := t.TempDir()
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, PrivateKeyFile)
	if err := os.WriteFile(path, []byte(key.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	got, err := LoadOrCreatePrivateKey(dir, logger)
	if err != nil {
		t.Fatal(err)
	}
	if got != key {
		t.Fatal("wrong key")
	}
	out := buf.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "chmod 600") {
		t.Errorf("no warning about the loose mode, log: %s", out)
	}
	if strings.Contains(out, key.String()) {
		t.Error("the log contains the private key")
	}
}
