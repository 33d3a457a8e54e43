package state

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

// TestLockExclusive: a held lock refuses a second holder without waiting,
// and is free again once released. flock locks belong to open file
// descriptions, so a second open in this process stands in for another
// process; a subprocess check proves it across processes too.
func TestLockExclusive(t *testing.T) {
	dir := t.TempDir()
	unlock, err := LockExclusive(dir, "serve.lock", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockExclusive(dir, "serve.lock", false); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	if out, err := exec.Command("flock", "-n", dir+"/serve.lock", "true").CombinedOutput(); err == nil {
		t.Fatalf("another process took the held lock: %s", out)
	}
	unlock()
	again, err := LockExclusive(dir, "serve.lock", false)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again()
	if fi, err := os.Stat(dir + "/serve.lock"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file mode %v err %v", fi.Mode(), err)
	}
}
