package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "f")
	if err := os.WriteFile(dst, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	wr := Writer{BeforeRename: func(tmp, d string) {
		if cur, _ := os.ReadFile(d); string(cur) != "old" {
			t.Errorf("%s changed before the rename: %q", d, cur)
		}
		if next, _ := os.ReadFile(tmp); string(next) != "new" {
			t.Errorf("temporary file incomplete before the rename: %q", next)
		}
	}}
	if err := wr.Write(dst, 0o600, func(w io.Writer) error { _, err := w.Write([]byte("new")); return err }); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dst)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("after Write: %v, mode %v", err, fi.Mode())
	}
	if got, _ := os.ReadFile(dst); string(got) != "new" {
		t.Errorf("content %q", got)
	}

	// A failing writer leaves the old file and no temporary file.
	if err := Write(dst, 0o644, func(io.Writer) error { return errors.New("boom") }); err == nil {
		t.Fatal("a failing writer should fail the write")
	}
	if got, _ := os.ReadFile(dst); string(got) != "new" {
		t.Errorf("a failed write changed the file: %q", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
	if err := WriteBytes(dst, 0o644, []byte("bytes")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "bytes" {
		t.Errorf("WriteBytes wrote %q", got)
	}
}
