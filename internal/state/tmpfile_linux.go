package state

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// openUnnamed opens an unnamed file in dir (O_TMPFILE), readable and
// writable only as perm allows.
func openUnnamed(dir string, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir, "(unnamed)")), nil
}

// linkUnnamed gives the complete unnamed file f a random name prefix+hex in
// dir, through /proc/self/fd (which needs no capability, unlike
// AT_EMPTY_PATH), and returns that path.
func linkUnnamed(f *os.File, dir, prefix string) (string, error) {
	src := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	for range 8 {
		var b [8]byte
		rand.Read(b[:])
		name := filepath.Join(dir, prefix+hex.EncodeToString(b[:]))
		err := unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, name, unix.AT_SYMLINK_FOLLOW)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return "", err
		}
	}
	return "", errors.New("no free temporary name")
}

// openUnnamedAt is openUnnamed for the directory open as dirfd.
func openUnnamedAt(dirfd int, name string, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// linkUnnamedAt is linkUnnamed for the directory open as dirfd: it gives f
// a random name prefix+hex in that directory and returns the name.
func linkUnnamedAt(f *os.File, dirfd int, prefix string) (string, error) {
	src := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	for range 8 {
		name := prefix + randomSuffix()
		err := unix.Linkat(unix.AT_FDCWD, src, dirfd, name, unix.AT_SYMLINK_FOLLOW)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return "", err
		}
	}
	return "", errors.New("no free temporary name")
}
