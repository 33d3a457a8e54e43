package state

import "golang.org/x/sys/unix"

// dirSearchFlags opens a directory on the way to the target. O_SEARCH
// (FreeBSD 13 and later) needs only search permission, like a path lookup,
// so a mode-0711 directory on the way does not stop --out.
const dirSearchFlags = unix.O_SEARCH
