// Package testutil holds helpers shared by the broker's tests: finding the
// real bw CLI and the module root, and a goroutine-safe buffer for captured
// logs. Only _test.go files import it.
package testutil

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// ModuleRoot returns the directory holding go.mod, found upward from the
// working directory (a test runs in its package's directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// FindBW returns the real bw CLI the tests run: $BROKER_BW, else the pinned
// install in <module root>/tools/bw. Its error says how to install it.
func FindBW() (string, error) {
	if p := os.Getenv("BROKER_BW"); p != "" {
		return p, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "tools", "bw", "node_modules", ".bin", "bw")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("the real bw CLI is not installed at %s: run `make tools` (npm ci --prefix tools/bw) or set BROKER_BW", p)
	}
	return p, nil
}

// BW is FindBW for a test: a missing bw fails the test (it is never
// skipped: CI installs it).
func BW(t testing.TB) string {
	t.Helper()
	p, err := FindBW()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers (loggers,
// subprocess output) and readers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns a copy of the contents.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Bytes returns a copy of the contents.
func (s *SyncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// ModuleRootT is ModuleRoot for a test, failing it when there is none.
func ModuleRootT(t testing.TB) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
