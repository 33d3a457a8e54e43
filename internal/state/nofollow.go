package state

import (
	"crypto/rand"
	"encoding/hex"
)

// SymlinkError reports that WriteFileAtomicNoFollow met a symbolic link
// where it wanted a directory or the file to replace.
type SymlinkError struct {
	Path string // the absolute path of the symbolic link
}

func (e *SymlinkError) Error() string {
	return e.Path + " is a symbolic link; the broker does not write through symlinks (give the real path)"
}

// randomSuffix returns 16 random hex digits for a temporary file name.
func randomSuffix() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
