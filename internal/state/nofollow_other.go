//go:build !linux && !freebsd

package state

import (
	"errors"
	"fmt"
	"os"
)

// WriteFileAtomicNoFollow would write data to path like WriteFileAtomic
// without following any symbolic link in path. It is implemented on linux
// and freebsd only; elsewhere it fails rather than write with weaker
// guarantees than it promises.
func WriteFileAtomicNoFollow(path string, data []byte, perm os.FileMode) error {
	return fmt.Errorf("write %s: %w", path, errNoFollowUnsupported)
}

var errNoFollowUnsupported = errors.New("writing without following symbolic links is supported on linux and freebsd only")
