package hardening

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestFullDisk fills the disk under `broker fetch --out`: on a small tmpfs
// (the real ENOSPC; needs mount privileges) and with a file-size limit
// (EFBIG, works for any user). Either way the fetch fails with exit 1 and a
// message saying the previous file is intact, and it is: byte for byte,
// with no temporary file left and the space given back.
func TestFullDisk(t *testing.T) {
	w := newSMWorld(t)
	big := w.addTenant(t, "big", 64, 4096) // about 270 KB of dotenv
	w.write(t, "60s")
	tok := mint(t, w.site, "big")
	b := startBroker(t, w.site, nil, nil)
	if r := b.fetch(t, tok, "big"); r.code != 0 || !bytes.Equal(r.stdout, big.dotenv(t)) {
		t.Fatalf("reference fetch: exit %d; stderr %s", r.code, r.stderr)
	}

	check := func(t *testing.T, dir, out string, r run, cause string) {
		t.Helper()
		checkCleanFailure(t, r, exitFailure, "the previous file, if any, is intact")
		if !bytes.Contains(r.stderr, []byte(cause)) {
			t.Errorf("stderr %q does not name the cause %q", r.stderr, cause)
		}
		if got, err := os.ReadFile(out); err != nil || string(got) != previousEnv {
			t.Errorf("the previous --out file holds %d bytes (%v), want it intact", len(got), err)
		}
		if names := dirNames(t, dir); len(names) != 1 {
			t.Errorf("dir holds %v after the failed write, want only the previous file", names)
		}
	}

	t.Run("tmpfs-enospc", func(t *testing.T) {
		dir := t.TempDir()
		if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=64k,mode=0700"); err != nil {
			if errors.Is(err, syscall.EPERM) {
				t.Skipf("mount tmpfs: %v (needs root or CAP_SYS_ADMIN; the file-size-limit case covers the same path)", err)
			}
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Cleanup(func() {
			if err := syscall.Unmount(dir, 0); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		out := filepath.Join(dir, "app.env")
		if err := os.WriteFile(out, []byte(previousEnv), 0o600); err != nil {
			t.Fatal(err)
		}
		var before syscall.Statfs_t
		syscall.Statfs(dir, &before)
		r := b.fetch(t, tok, "big", "--out", out)
		check(t, dir, out, r, "no space left on device")
		var after syscall.Statfs_t
		syscall.Statfs(dir, &after)
		if after.Bfree != before.Bfree {
			t.Errorf("free blocks %d before, %d after: the partial temporary file's space was not given back", before.Bfree, after.Bfree)
		}
	})

	t.Run("rlimit-fsize-efbig", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "app.env")
		if err := os.WriteFile(out, []byte(previousEnv), 0o600); err != nil {
			t.Fatal(err)
		}
		// sh sets a 64-block file size limit, then execs the broker (Go
		// ignores SIGXFSZ, so the write fails with EFBIG).
		sh := []string{"-c", `ulimit -f 64 && exec "$0" "$@"`, brokerBin, "fetch", "--socket", b.site.sock, "--tenant", "big", "--out", out}
		r := runCmd(t, "/bin/sh", []string{"BROKER_TOKEN=" + tok}, "big", sh...)
		check(t, dir, out, r, "file too large")
	})
}
