package server

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultSocket is where serve listens and fetch dials when neither a flag
// nor BROKER_SOCKET says otherwise.
const DefaultSocket = "/run/broker/broker.sock"

// ListenSpec is a parsed --listen value.
type ListenSpec struct {
	Network string // "unix" or "tcp"
	Address string // socket path or host:port
}

// ParseListen parses "unix:PATH" or "tcp:HOST:PORT". A bare absolute path is
// taken as a Unix socket. TCP is accepted only on loopback addresses: the API
// carries bearer tokens and secrets in clear text.
func ParseListen(s string) (ListenSpec, error) {
	switch {
	case strings.HasPrefix(s, "unix:"):
		p := strings.TrimPrefix(s, "unix:")
		if !filepath.IsAbs(p) {
			return ListenSpec{}, fmt.Errorf("listen address %q: the socket path must be absolute", s)
		}
		return ListenSpec{"unix", filepath.Clean(p)}, nil
	case strings.HasPrefix(s, "tcp:"):
		hp := strings.TrimPrefix(s, "tcp:")
		host, _, err := net.SplitHostPort(hp)
		if err != nil {
			return ListenSpec{}, fmt.Errorf("listen address %q: want tcp:HOST:PORT: %v", s, err)
		}
		if !isLoopback(host) {
			return ListenSpec{}, fmt.Errorf("listen address %q: tcp is allowed only on loopback (127.0.0.1, ::1, localhost); use a unix socket for anything else", s)
		}
		return ListenSpec{"tcp", hp}, nil
	case filepath.IsAbs(s):
		return ListenSpec{"unix", filepath.Clean(s)}, nil
	}
	return ListenSpec{}, fmt.Errorf("listen address %q: want unix:PATH or tcp:HOST:PORT", s)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// Listen opens the listener. For a Unix socket it:
//   - refuses to take over a socket a live broker still answers on;
//   - removes a stale socket (nothing answers), but never a non-socket file;
//   - binds inside a fresh owner-only directory next to the final path, sets
//     the socket's mode, and only then renames it into place, so there is no
//     moment at which the socket exists at its public path with a wider mode.
//
// The returned cleanup removes the socket; call it after the server stopped.
func Listen(spec ListenSpec, mode fs.FileMode) (net.Listener, func(), error) {
	if spec.Network == "tcp" {
		ln, err := net.Listen("tcp", spec.Address)
		if err != nil {
			return nil, nil, fmt.Errorf("failed to listen on %s: %v", spec.Address, err)
		}
		return ln, func() {}, nil
	}
	path := spec.Address
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("failed to create socket directory %s: %v", dir, err)
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, nil, err
	}
	tmpDir, err := os.MkdirTemp(dir, ".broker-sock-")
	if err != nil {
		return nil, nil, fmt.Errorf("failed to create a private directory beside %s: %v", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("failed to listen on %s: %v", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("failed to set the mode of %s: %v", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("failed to move the socket into place at %s: %v", path, err)
	}
	cleanup := func() {
		// Remove the socket only if it is still ours (a newer broker may have
		// replaced it after we stopped answering).
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			os.Remove(path)
		}
	}
	return ln, cleanup, nil
}

// checkSocketDir refuses a socket directory that others may write to
// without the sticky bit: they could replace the broker's socket with
// their own and collect the caller tokens sent to it.
func checkSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("failed to inspect socket directory %s: %v", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("socket directory %s is writable by group or others (mode %04o): they could replace the socket; run: chmod go-w %s (or use a dir such as /run/broker)",
			dir, fi.Mode().Perm(), dir)
	}
	return nil
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to inspect %s: %v", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; remove it or choose another --listen path", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s: address already in use: another broker is answering there; stop it first", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: cannot tell whether a broker is still running there: %v", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("failed to remove the stale socket %s: %v", path, err)
	}
	return nil
}
