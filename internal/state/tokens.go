package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostd/broker/internal/scope"
)

// File names in the state dir.
const (
	TokenFileName = "tokens.json"
	tokenLockName = "tokens.lock"
)

// LockTimeout bounds how long Update waits for another process (another
// `broker token` command) to release the token store lock.
const LockTimeout = 10 * time.Second

// TokenFile is the caller-token store in a state dir (stateDir/tokens.json),
// with its lock file (stateDir/tokens.lock). Its methods are safe for
// concurrent use, from goroutines and from processes: Update takes an
// exclusive flock, and the file is only ever replaced atomically, so Load
// never sees a partial write.
type TokenFile struct {
	dir, path, lock string
}

// OpenTokenFile returns the token store of stateDir. It does no I/O.
func OpenTokenFile(stateDir string) *TokenFile {
	return &TokenFile{
		dir:  stateDir,
		path: filepath.Join(stateDir, TokenFileName),
		lock: filepath.Join(stateDir, tokenLockName),
	}
}

// Path returns the token store's file name.
func (f *TokenFile) Path() string { return f.path }

// Load reads the token store. A missing file is an empty store. The file
// must pass the private-file check; errors start with `token store PATH`.
func (f *TokenFile) Load() (*scope.TokenStore, error) {
	fh, err := openPrivate(labelTokens, f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return scope.NewTokenStore(), nil
	}
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	s, err := scope.ParseTokenStore(fh)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", labelTokens, f.path, err)
	}
	return s, nil
}

// Update changes the token store under an exclusive lock: it makes sure the
// state dir exists and is private, locks, loads, calls fn, and, if fn
// returns nil, writes the store back atomically with mode 0600. An error
// from fn is returned as is and nothing is written.
func (f *TokenFile) Update(fn func(*scope.TokenStore) error) error {
	if err := EnsureStateDir(f.dir); err != nil {
		return err
	}
	unlock, err := f.lockFile()
	if err != nil {
		return err
	}
	defer unlock()
	s, err := f.Load()
	if err != nil {
		return err
	}
	if err := fn(s); err != nil {
		return err
	}
	data, err := s.Marshal()
	if err != nil {
		return fmt.Errorf("%s %s: %w", labelTokens, f.path, err)
	}
	return WriteFileAtomic(f.path, data, 0o600)
}

// lockFile takes the exclusive flock on the lock file, waiting at most
// LockTimeout, and returns the function that releases it.
func (f *TokenFile) lockFile() (unlock func(), err error) {
	lf, err := os.OpenFile(f.lock, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s lock %s: %w", labelTokens, f.lock, unwrapPath(err))
	}
	fd := int(lf.Fd())
	deadline := time.Now().Add(LockTimeout)
	for wait := time.Millisecond; ; {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			lf.Close()
			return nil, fmt.Errorf("%s lock %s: %w", labelTokens, f.lock, err)
		}
		if time.Now().After(deadline) {
			lf.Close()
			return nil, fmt.Errorf("%s %s is locked by another process (waited %s); try again", labelTokens, f.path, LockTimeout)
		}
		time.Sleep(wait)
		wait = min(2*wait, 50*time.Millisecond)
	}
	// Closing the descriptor releases the lock.
	return func() { lf.Close() }, nil
}

// FileStamp identifies a version of a file cheaply (no read): the server's
// reload poller compares stamps with ==. The zero FileStamp means the file
// does not exist.
type FileStamp struct {
	Exists  bool
	ModNano int64 // modification time, Unix nanoseconds
	Size    int64
	Dev     uint64
	Ino     uint64
}

// Stamp returns the token store's current FileStamp. A missing file gives
// the zero FileStamp and no error. Every Update replaces the file (a new
// inode), so a change shows even within the file system's time resolution.
func (f *TokenFile) Stamp() (FileStamp, error) {
	fi, err := os.Lstat(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return FileStamp{}, nil
	}
	if err != nil {
		return FileStamp{}, fmt.Errorf("%s %s: %w", labelTokens, f.path, unwrapPath(err))
	}
	st := FileStamp{Exists: true, ModNano: fi.ModTime().UnixNano(), Size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Dev, st.Ino = uint64(sys.Dev), uint64(sys.Ino) // the field types differ by OS
	}
	return st, nil
}
