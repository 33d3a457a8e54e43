//go:build unix

package server

import (
	"os"
	"syscall"
)

// fileIDs is what identifies a file's version beyond its mtime, size and
// mode: which file it is, and who owns it.
type fileIDs struct {
	ino, dev       uint64
	uid, gid       uint32
	ctimeS, ctimeN int64
}

func idsOf(fi os.FileInfo) fileIDs {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileIDs{}
	}
	return fileIDs{ino: uint64(st.Ino), dev: uint64(st.Dev), uid: st.Uid, gid: st.Gid}
}
