package state

import "golang.org/x/sys/unix"

// dirSearchFlags opens a directory on the way to the target: O_PATH needs
// only search permission, like an ordinary path lookup.
const dirSearchFlags = unix.O_PATH
