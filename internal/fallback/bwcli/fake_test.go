package bwcli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// fakeHangName is the name under which the test binary acts as a bw that
// runs the real `bw unlock`, prints its answer (the session key) and then
// hangs forever: a fault the real bw cannot be made to produce. Every other
// command is handed to the real bw.
const fakeHangName = "bw-hang"

// fakeRealFile, next to the fake, holds the path of the real bw (the
// backend gives its children no environment to pass it in).
const fakeRealFile = "real-bw-path"

func fakeHangMain() int {
	self := os.Args[0]
	realPath, err := os.ReadFile(filepath.Join(filepath.Dir(self), fakeRealFile))
	if err != nil {
		os.Stderr.WriteString("fake bw: no real bw path\n")
		return 1
	}
	real := string(bytes.TrimSpace(realPath))
	args := os.Args[1:]
	if !slices.Contains(args, "unlock") {
		err := syscall.Exec(real, append([]string{real}, args...), os.Environ())
		os.Stderr.WriteString("fake bw: exec: " + err.Error() + "\n")
		return 1
	}
	cmd := exec.Command(real, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return 1
	}
	for {
		time.Sleep(time.Hour)
	}
}
