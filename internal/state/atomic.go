package state

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// atomicHook, when not nil, runs before each step of WriteFileAtomic
// ("write", "sync", "link" (unnamed files only), "rename"); an error from
// it fails that step. It exists
// for fault-injection tests and is nil in production.
var atomicHook func(step string) error

func hook(step string) error {
	if atomicHook == nil {
		return nil
	}
	return atomicHook(step)
}

// WriteFileAtomic writes data to path so that readers see either the old
// file or the whole new one: it writes a temporary file in the same
// directory (created exclusively, then set to perm), syncs and closes it,
// renames it over path, and syncs the directory. On any error before the
// rename, the temporary file is removed and the old file is untouched. An
// error syncing the directory after the rename is reported, but the new
// file is then already in place.
//
// WriteFileAtomic follows symbolic links in the directory part of path;
// for a directory that someone else controls, use WriteFileAtomicNoFollow.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	t := &target{
		path:    path,
		link:    func(f *os.File) (string, error) { return linkUnnamed(f, dir, "."+base+".tmp-") },
		rename:  func(tmp string) error { return os.Rename(tmp, path) },
		remove:  func(tmp string) { os.Remove(tmp) },
		syncDir: func() error { return syncDir(dir) },
	}
	// On Linux the data is first written to an unnamed file (O_TMPFILE) that
	// gets a name only once it is complete, so a process killed mid-write
	// leaves nothing behind. Elsewhere, or where the filesystem lacks
	// O_TMPFILE, a named temporary file is used.
	if f, err := openUnnamed(dir, perm); err == nil {
		err := t.write(f, "", data, perm)
		if !errors.Is(err, errLink) {
			return err
		}
		// Naming the unnamed file failed (no /proc, say): fall back.
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: create temporary file: %w", path, unwrapPath(err))
	}
	return t.write(f, f.Name(), data, perm)
}

// target is where an atomic write goes: the operations that name, rename
// and remove its temporary file and sync its directory. WriteFileAtomic
// does them by path, WriteFileAtomicNoFollow relative to an open directory.
type target struct {
	path    string                         // the target as the caller named it, for messages
	link    func(*os.File) (string, error) // names a complete unnamed file; returns the name
	rename  func(tmp string) error         // renames the temporary file over the target
	remove  func(tmp string)               // removes the temporary file
	syncDir func() error                   // syncs the target's directory
}

// write writes data to f (named tmp, or unnamed when tmp is ""), gives it a
// temporary name if needed, and renames it over the target. On an error
// before the rename, f is closed and the temporary file removed.
func (t *target) write(f *os.File, tmp string, data []byte, perm os.FileMode) (err error) {
	path := t.path
	defer func() {
		if err != nil {
			f.Close()
			if tmp != "" {
				t.remove(tmp)
			}
		}
	}()
	step := func(name string, fn func() error) error {
		if err := hook(name); err != nil {
			return fmt.Errorf("write %s: %s: %w", path, name, err)
		}
		if err := fn(); err != nil {
			return fmt.Errorf("write %s: %s: %w", path, name, unwrapPath(err))
		}
		return nil
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: chmod temporary file: %w", path, unwrapPath(err))
	}
	if err := step("write", func() error { _, err := f.Write(data); return err }); err != nil {
		return err
	}
	if err := step("sync", f.Sync); err != nil {
		return err
	}
	if tmp == "" {
		name, err := "", hook("link")
		if err == nil {
			name, err = t.link(f)
		}
		if err != nil {
			return fmt.Errorf("write %s: %w: %v", path, errLink, unwrapPath(err))
		}
		tmp = name
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: close: %w", path, unwrapPath(err))
	}
	if err := step("rename", func() error { return t.rename(tmp) }); err != nil {
		return err
	}
	if err := t.syncDir(); err != nil {
		return fmt.Errorf("write %s: sync directory (the new file is in place): %w", path, unwrapPath(err))
	}
	return nil
}

// errLink marks a failure to name an unnamed temporary file, after which
// WriteFileAtomic falls back to a named one.
var errLink = errors.New("link temporary file")

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readAllBounded reads r to the end, refusing more than max bytes.
func readAllBounded(r io.Reader, max int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("read: %w", unwrapPath(err))
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return data, nil
}
