// Package state does the broker's file I/O around internal/scope: it loads
// the policy file and the provider env file, keeps the caller-token store in
// the state dir, checks that bootstrap credentials are owner-only, and writes
// files atomically.
//
// # Permissions
//
// The provider env file, the state dir and the token store must belong to
// the broker's effective uid and be inaccessible to group and others
// (DESIGN 2.5); symbolic links are refused, so that whoever can write the
// link's directory cannot redirect the broker. Every refusal says what to
// run to fix it. The policy file holds no secret but decides where
// credentials are sent, so it must not be writable by group or others and
// must belong to root or to the broker's uid.
//
// Files are opened with O_NOFOLLOW and checked with fstat on the open
// descriptor, so a check and the read that follows it see the same file.
//
// The package builds on Linux and FreeBSD (and other Unix systems).
package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Labels used in messages.
const (
	labelFile    = "file"
	labelDir     = "directory"
	labelEnvFile = "provider env file"
	labelState   = "state dir"
	labelTokens  = "token store"
	labelPolicy  = "policy"
)

// CheckPrivateFile checks that path is a regular file (not a symbolic link),
// owned by the effective uid, with no permission bits for group or others.
// Otherwise it returns an error that says what to run, such as
//
//	file /x/env is readable by group or others (mode 0644); run: chmod 600 /x/env
func CheckPrivateFile(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("%s %s: %w", labelFile, path, unwrapPath(err))
	}
	return checkPrivate(labelFile, path, fi, false)
}

// CheckPrivateDir is CheckPrivateFile for a directory (the fix is chmod 700).
func CheckPrivateDir(path string) error {
	return checkPrivateDir(labelDir, path)
}

func checkPrivateDir(label, path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("%s %s: %w", label, path, unwrapPath(err))
	}
	return checkPrivate(label, path, fi, true)
}

// EnsureStateDir creates the state dir (mode 0700, with any missing
// parents) if it does not exist, then checks it with CheckPrivateDir.
func EnsureStateDir(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(path, 0o700); err != nil {
			return fmt.Errorf("%s %s: create: %w", labelState, path, unwrapPath(err))
		}
	}
	return checkPrivateDir(labelState, path)
}

// checkPrivate checks fi (from Lstat, or from fstat of a file opened with
// O_NOFOLLOW) for the private-file or private-dir rules.
func checkPrivate(label, path string, fi fs.FileInfo, dir bool) error {
	mode := fi.Mode()
	switch {
	case mode&fs.ModeSymlink != 0:
		msg := fmt.Sprintf("%s %s is a symbolic link, which is refused", label, path)
		if real, err := filepath.EvalSymlinks(path); err == nil {
			msg += fmt.Sprintf("; use the real path %s", real)
		}
		return errors.New(msg)
	case dir && !mode.IsDir():
		return fmt.Errorf("%s %s is not a directory", label, path)
	case !dir && !mode.IsRegular():
		return fmt.Errorf("%s %s is not a regular file", label, path)
	}
	if uid, ok := fileUID(fi); ok && uid != os.Geteuid() {
		return fmt.Errorf("%s %s is owned by uid %d, not by the broker's uid %d; run: %s",
			label, path, uid, os.Geteuid(), command("chown", fmt.Sprint(os.Geteuid()), path))
	}
	if perm := mode.Perm(); perm&0o077 != 0 {
		fix := "600"
		if dir {
			fix = "700"
		}
		return fmt.Errorf("%s %s is %s by group or others (mode %04o); run: %s",
			label, path, exposure(perm), perm, command("chmod", fix, path))
	}
	return nil
}

// exposure says how group or others can reach a file with permissions perm.
func exposure(perm fs.FileMode) string {
	switch {
	case perm&0o044 != 0:
		return "readable"
	case perm&0o022 != 0:
		return "writable"
	}
	return "accessible"
}

func fileUID(fi fs.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}

// command renders a shell command that fixes path, quoting path if needed.
func command(name, arg, path string) string {
	sep := " "
	if strings.HasPrefix(path, "-") {
		sep = " -- "
	}
	return name + " " + arg + sep + shellQuote(path)
}

// shellQuote quotes s for a POSIX shell when it contains anything but
// characters that are always safe.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r == '/' || r == '.' || r == '_' || r == '-' || r == '+' || r == ':' || r == ',' || r == '@' || r == '%' || r == '=' ||
			'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// unwrapPath strips the *fs.PathError wrapper (whose text repeats the path
// the caller already names), keeping the cause for errors.Is.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// openPrivate opens path for reading without following a symbolic link and
// without blocking on a FIFO, and checks the open file with checkPrivate.
// A missing file yields an error wrapping fs.ErrNotExist.
func openPrivate(label, path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.EMLINK) { // FreeBSD says EMLINK
			if fi, lerr := os.Lstat(path); lerr == nil {
				return nil, checkPrivate(label, path, fi, false)
			}
		}
		return nil, fmt.Errorf("%s %s: %w", label, path, unwrapPath(err))
	}
	fi, err := f.Stat()
	if err == nil {
		err = checkPrivate(label, path, fi, false)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
