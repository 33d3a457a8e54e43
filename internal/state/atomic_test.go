package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.env")
	if err := WriteFileAtomic(path, []byte("A=1\n"), 0o600); err != nil {
		t.Fatalf("WriteFileAtomic(new) = %v", err)
	}
	if err := WriteFileAtomic(path, []byte("A=2\n"), 0o640); err != nil {
		t.Fatalf("WriteFileAtomic(replace) = %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "A=2\n" {
		t.Fatalf("content = %q, %v; want the new content", got, err)
	}
	fi, _ := os.Stat(path)
	if g, w := fi.Mode().Perm(), os.FileMode(0o640); g != w {
		t.Errorf("mode = %v, want %v", g, w)
	}
	if names := dirNames(t, dir); len(names) != 1 {
		t.Errorf("dir holds %v, want only out.env", names)
	}
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "x"), nil, 0o600); err == nil {
		t.Errorf("WriteFileAtomic into a missing dir succeeded")
	}
}

func TestWriteFileAtomicFaults(t *testing.T) {
	injected := errors.New("injected fault")
	for _, step := range []string{"write", "sync", "rename"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out.env")
			writeFile(t, path, "OLD=1\n", 0o600)
			var seen []string
			atomicHook = func(s string) error {
				seen = append(seen, s)
				if s == step {
					return injected
				}
				return nil
			}
			defer func() { atomicHook = nil }()

			err := WriteFileAtomic(path, []byte("NEW=2\n"), 0o600)
			if !errors.Is(err, injected) {
				t.Fatalf("WriteFileAtomic = %v, want the injected fault", err)
			}
			if seen[len(seen)-1] != step {
				t.Errorf("steps run: %v, want them to stop at %s", seen, step)
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != "OLD=1\n" {
				t.Errorf("after a fault at %s the file holds %q (%v), want the old content", step, got, err)
			}
			if names := dirNames(t, dir); len(names) != 1 || names[0] != "out.env" {
				t.Errorf("after a fault at %s the dir holds %v, want only out.env", step, names)
			}
		})
	}
}

// TestWriteFileAtomicLinkFallback: when an unnamed temporary file cannot be
// given a name (no /proc, say), the write falls back to a named temporary
// file and still succeeds, leaving nothing behind.
func TestWriteFileAtomicLinkFallback(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.env")
	steps := []string{}
	atomicHook = func(step string) error {
		steps = append(steps, step)
		if step == "link" {
			return errors.New("injected link failure")
		}
		return nil
	}
	defer func() { atomicHook = nil }()
	if err := WriteFileAtomic(path, []byte("A=1\n"), 0o600); err != nil {
		t.Fatalf("WriteFileAtomic: %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "A=1\n" {
		t.Fatalf("content %q err %v", got, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("left %d entries in the directory, want 1", len(entries))
	}
	if runtime.GOOS == "linux" && fmt.Sprint(steps) != "[write sync link write sync rename]" {
		t.Fatalf("steps %v: want the unnamed attempt, then the named fallback", steps)
	}
}
