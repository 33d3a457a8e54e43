package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hostd/broker/internal/scope"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// newRecord mints a token and returns it with its record.
func newRecord(t *testing.T, tenant string) (scope.Token, scope.TokenRecord) {
	t.Helper()
	tok, id, hash, err := scope.MintToken(nil)
	if err != nil {
		t.Error(err) // may run in a goroutine
	}
	return tok, scope.TokenRecord{ID: id, Hash: hash, Tenants: []string{tenant}, Created: t0}
}

func TestTokenFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	tf := OpenTokenFile(dir)

	// Missing dir and file: empty store, zero stamp.
	s, err := tf.Load()
	if err != nil || len(s.Tokens) != 0 {
		t.Fatalf("Load(missing) = %v, %v; want an empty store", s, err)
	}
	st0, err := tf.Stamp()
	if err != nil || st0 != (FileStamp{}) {
		t.Fatalf("Stamp(missing) = %+v, %v; want zero", st0, err)
	}

	tok, rec := newRecord(t, "acme")
	if err := tf.Update(func(s *scope.TokenStore) error { return s.Add(rec) }); err != nil {
		t.Fatalf("Update(add) = %v", err)
	}
	fi, err := os.Lstat(tf.Path())
	if err != nil {
		t.Fatal(err)
	}
	if g, w := fi.Mode().Perm(), os.FileMode(0o600); g != w {
		t.Errorf("token store mode = %v, want %v", g, w)
	}
	if err := CheckPrivateDir(dir); err != nil {
		t.Errorf("Update made a state dir that is not private: %v", err)
	}
	st1, err := tf.Stamp()
	if err != nil || !st1.Exists || st1 == st0 {
		t.Fatalf("Stamp after Update = %+v, %v; want a new existing stamp", st1, err)
	}
	if st, _ := tf.Stamp(); st != st1 {
		t.Errorf("Stamp changed without a write: %+v then %+v", st1, st)
	}

	s, err = tf.Load()
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	if _, err := s.Verify(tok.Reveal(), t0); err != nil {
		t.Errorf("stored token does not verify: %v", err)
	}

	// An error from fn is returned as is and nothing is written.
	errStop := errors.New("stop")
	if err := tf.Update(func(s *scope.TokenStore) error { s.Remove(rec.ID); return errStop }); err != errStop {
		t.Errorf("Update(fn error) = %v, want %v", err, errStop)
	}
	if st, _ := tf.Stamp(); st != st1 {
		t.Errorf("a failed Update rewrote the file")
	}

	// Revoke: the stamp changes, even if size and mtime could match.
	if err := tf.Update(func(s *scope.TokenStore) error { s.Remove(rec.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if st, _ := tf.Stamp(); st == st1 {
		t.Errorf("Stamp did not change after a revoke")
	}
	s, _ = tf.Load()
	if _, err := s.Verify(tok.Reveal(), t0); err != scope.ErrUnauthorized {
		t.Errorf("revoked token: Verify = %v, want ErrUnauthorized", err)
	}

	// A readable store is refused.
	if err := os.Chmod(tf.Path(), 0o644); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("token store %s is readable by group or others (mode 0644); run: chmod 600 %s", tf.Path(), tf.Path())
	if _, err := tf.Load(); err == nil || err.Error() != want {
		t.Errorf("Load(0644) = %v, want %q", err, want)
	}
	if err := tf.Update(func(*scope.TokenStore) error { return nil }); err == nil || err.Error() != want {
		t.Errorf("Update(0644) = %v, want %q", err, want)
	}

	// A corrupt store is refused with its path.
	writeFile(t, tf.Path(), `{"version":1,"tokens":[{"id":"x"}]}`, 0o600)
	want = fmt.Sprintf("token store %s: tokens[0].id: not a token id (want 12 characters of a-z and 2-7)", tf.Path())
	if _, err := tf.Load(); err == nil || err.Error() != want {
		t.Errorf("Load(corrupt) = %v, want %q", err, want)
	}
}

func TestTokenFileConcurrentUpdate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // created 0700 by the first Update
	const workers, each = 8, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tf := OpenTokenFile(dir) // its own descriptors: the flock is what serializes
			for range each {
				_, rec := newRecord(t, fmt.Sprintf("tenant-%d", w))
				errs <- tf.Update(func(s *scope.TokenStore) error { return s.Add(rec) })
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Update: %v", err)
		}
	}
	s, err := OpenTokenFile(dir).Load()
	if err != nil {
		t.Fatal(err)
	}
	if g, w := len(s.Tokens), workers*each; g != w {
		t.Errorf("store has %d tokens, want %d (a concurrent Update lost records)", g, w)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != TokenFileName && e.Name() != tokenLockName {
			t.Errorf("leftover file %s in the state dir", e.Name())
		}
	}
}
