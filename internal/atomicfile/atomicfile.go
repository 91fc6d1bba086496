// Package atomicfile writes files so that a reader or a crash sees the old
// file or the whole new one, never a part: through a temporary file in the
// same directory, synced, renamed over the target, and the directory synced.
package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Writer writes files atomically. The zero Writer is ready to use.
type Writer struct {
	// BeforeRename, when set, runs once the temporary file is complete
	// and closed, just before it is renamed over dst (tests use it to
	// look at both files).
	BeforeRename func(tmp, dst string)
}

// Write writes what write produces to dst with permissions perm.
func Write(dst string, perm fs.FileMode, write func(io.Writer) error) error {
	return Writer{}.Write(dst, perm, write)
}

// WriteBytes writes data to dst with permissions perm.
func WriteBytes(dst string, perm fs.FileMode, data []byte) error {
	return Write(dst, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write writes what write produces to dst with permissions perm; on an
// error the temporary file is removed and dst is left as it was.
func (wr Writer) Write(dst string, perm fs.FileMode, write func(io.Writer) error) (err error) {
	dir := filepath.Dir(dst)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := write(tmp); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if wr.BeforeRename != nil {
		wr.BeforeRename(tmp.Name(), dst)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: open %s to sync it: %w", dst, dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("write %s: sync %s: %w", dst, dir, err)
	}
	return nil
}
