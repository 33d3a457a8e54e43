package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestWatchSeesEveryKindOfChange: a content change, a replacement by
// rename, and a chmod (what an operator runs to make a refused file load)
// each trigger a reload.
func TestWatchSeesEveryKindOfChange(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.json")
	if err := os.WriteFile(path, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	changes := make(chan string, 16)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go Watch(ctx, []string{path}, 5*time.Millisecond, nil, func(r string) { changes <- r })
	time.Sleep(20 * time.Millisecond) // let the first stamps be taken

	for _, tt := range []struct {
		name string
		do   func() error
	}{
		{"chmod", func() error { return os.Chmod(path, 0o600) }},
		{"rewrite", func() error { return os.WriteFile(path, []byte("bb"), 0o600) }},
		{"replace", func() error {
			tmp := filepath.Join(dir, "new")
			if err := os.WriteFile(tmp, []byte("cc"), 0o600); err != nil {
				return err
			}
			return os.Rename(tmp, path)
		}},
	} {
		if err := tt.do(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-changes:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no reload", tt.name)
		}
	}
}
