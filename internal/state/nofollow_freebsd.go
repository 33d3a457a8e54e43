package state

import "golang.org/x/sys/unix"

// dirSearchFlags opens a directory on the way to the target. O_RDONLY needs
// read permission on each directory, not just search permission.
const dirSearchFlags = unix.O_RDONLY
