//go:build linux || freebsd

package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// WriteFileAtomicNoFollow is WriteFileAtomic for a path whose directories
// someone else may control (a tenant's jail): it never writes through a
// symbolic link.
//
// A relative path is taken against the working directory as the kernel
// reports it (getcwd, not $PWD), and the path is cleaned lexically. The
// directory is then opened from "/" one component at a time with
// O_NOFOLLOW|O_DIRECTORY, so a symbolic link anywhere in it fails the write
// with a *SymlinkError naming that link. If the last component exists, it
// must be a regular file: a symbolic link there is refused too (a
// *SymlinkError), although the rename would only replace the link, because
// a link where the broker writes is a sign of tampering the operator should
// see; a directory, FIFO, socket or device is refused as well.
//
// Every later step (the temporary file, the rename over the target, the
// directory sync) is done relative to the opened directory, so no path
// lookup after the walk can be redirected. The promises of WriteFileAtomic
// hold: the temporary file is created owner-only and set to exactly perm,
// synced and renamed over the target; on any error before the rename it is
// removed and the previous file is untouched.
func WriteFileAtomicNoFollow(path string, data []byte, perm os.FileMode) error {
	abs, dir, base, err := splitNoFollow(path)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	dirfd, err := openDirNoFollow(dir)
	if err != nil {
		var se *SymlinkError
		if errors.As(err, &se) {
			return se
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer unix.Close(dirfd)

	var st unix.Stat_t
	switch err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case errors.Is(err, unix.ENOENT):
	case err != nil:
		return fmt.Errorf("write %s: %w", path, err)
	case st.Mode&unix.S_IFMT == unix.S_IFREG:
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return &SymlinkError{Path: abs}
	default:
		return fmt.Errorf("write %s: %s exists and is %s, not a regular file", path, abs, fileKind(uint32(st.Mode)))
	}

	prefix := "." + base + ".tmp-"
	t := &target{
		path:    path,
		link:    func(f *os.File) (string, error) { return linkUnnamedAt(f, dirfd, prefix) },
		rename:  func(tmp string) error { return unix.Renameat(dirfd, tmp, dirfd, base) },
		remove:  func(tmp string) { unix.Unlinkat(dirfd, tmp, 0) },
		syncDir: func() error { return unix.Fsync(dirfd) },
	}
	// As in WriteFileAtomic: an unnamed file first (Linux), a named one if
	// that is not possible.
	if f, err := openUnnamedAt(dirfd, abs, 0o600); err == nil {
		err := t.write(f, "", data, perm)
		if !errors.Is(err, errLink) {
			return err
		}
	}
	f, tmp, err := createTempAt(dirfd, dir, prefix)
	if err != nil {
		return fmt.Errorf("write %s: create temporary file: %w", path, err)
	}
	return t.write(f, tmp, data, perm)
}

// splitNoFollow makes path absolute and clean and splits it into its
// directory and last component.
func splitNoFollow(path string) (abs, dir, base string, err error) {
	if path == "" {
		return "", "", "", errors.New("empty path")
	}
	if strings.HasSuffix(path, "/") {
		return "", "", "", errors.New("the path names a directory; give a file path")
	}
	if !filepath.IsAbs(path) {
		wd, err := unix.Getwd()
		if err != nil {
			return "", "", "", fmt.Errorf("working directory: %w", err)
		}
		path = filepath.Join(wd, path)
	}
	abs = filepath.Clean(path)
	dir, base = filepath.Split(abs)
	if base == "" || base == "." || base == ".." {
		return "", "", "", errors.New("the path names a directory; give a file path")
	}
	return abs, filepath.Clean(dir), base, nil
}

// openDirNoFollow opens the absolute, clean directory dir by walking it from
// "/" with O_NOFOLLOW, and returns a descriptor that can be read and synced.
// A symbolic link on the way yields a *SymlinkError.
func openDirNoFollow(dir string) (int, error) {
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open directory /: %w", err)
	}
	if dir == "/" {
		return fd, nil
	}
	names := strings.Split(dir[1:], "/")
	for i, name := range names {
		// Intermediate directories need only be searched; the last one
		// is read and synced.
		flags := dirSearchFlags
		if i == len(names)-1 {
			flags = unix.O_RDONLY
		}
		next, err := unix.Openat(fd, name, flags|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			err = dirOpenError(fd, name, "/"+strings.Join(names[:i+1], "/"), err)
			unix.Close(fd)
			return -1, err
		}
		unix.Close(fd)
		fd = next
	}
	return fd, nil
}

// dirOpenError explains why name (at path) in the directory fd could not be
// opened as a directory: whatever the errno (Linux says ELOOP or ENOTDIR,
// FreeBSD EMLINK), the entry's own type decides.
func dirOpenError(fd int, name, path string, err error) error {
	var st unix.Stat_t
	if unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			return &SymlinkError{Path: path}
		case unix.S_IFDIR:
		default:
			return fmt.Errorf("open directory %s: it is %s, not a directory", path, fileKind(uint32(st.Mode)))
		}
	}
	return fmt.Errorf("open directory %s: %w", path, err)
}

// createTempAt creates a new owner-only file named prefix+random in the
// directory dirfd (whose path is dir), without following a symbolic link.
func createTempAt(dirfd int, dir, prefix string) (*os.File, string, error) {
	for range 8 {
		name := prefix + randomSuffix()
		fd, err := unix.Openat(dirfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return os.NewFile(uintptr(fd), filepath.Join(dir, name)), name, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return nil, "", err
		}
	}
	return nil, "", errors.New("no free temporary name")
}

// fileKind names the type in a stat mode, for messages.
func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device"
	case unix.S_IFREG:
		return "a regular file"
	}
	return "a special file"
}
