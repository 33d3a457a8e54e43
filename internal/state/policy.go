package state

import (
	"fmt"
	"os"
	"syscall"

	"github.com/hostd/broker/internal/scope"
)

// LoadPolicy reads and validates the policy file. The file holds no secret
// and may be a symbolic link (configuration management often links it), but
// it decides where upstream credentials are sent, so it must belong to root
// or to the broker's uid and must not be writable by group or others.
// Errors start with the file name: `policy /etc/broker/policy.json: tenants.acme...`.
func LoadPolicy(path string) (*scope.Policy, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", labelPolicy, path, unwrapPath(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", labelPolicy, path, unwrapPath(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s %s is not a regular file", labelPolicy, path)
	}
	if uid, ok := fileUID(fi); ok && uid != 0 && uid != os.Geteuid() {
		return nil, fmt.Errorf("%s %s is owned by uid %d, neither root nor the broker's uid %d; run: %s",
			labelPolicy, path, uid, os.Geteuid(), command("chown", fmt.Sprint(os.Geteuid()), path))
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return nil, fmt.Errorf("%s %s is writable by group or others (mode %04o), and it decides where credentials are sent; run: %s",
			labelPolicy, path, perm, command("chmod", "go-w", path))
	}
	p, err := scope.ParsePolicy(f)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", labelPolicy, path, err)
	}
	return p, nil
}
