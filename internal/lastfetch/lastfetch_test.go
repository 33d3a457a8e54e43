package lastfetch

import (
	"bytes"
	"os"
	"testing"
	"time"
)

func TestRecorderWritesAndLoads(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	r := NewRecorder(dir, nil)
	at := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	r.Record("acme", "ok", "sm", at)
	r.Record("globex", "upstream_unavailable", "", at.Add(time.Second))
	r.Record("acme", "ok", "cache", at.Add(2*time.Second)) // the latest wins
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r.Record("late", "ok", "sm", at) // after Close: dropped

	got, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := map[string]Entry{
		"acme":   {Outcome: "ok", Source: "cache", At: at.Add(2 * time.Second)},
		"globex": {Outcome: "upstream_unavailable", At: at.Add(time.Second)},
	}
	if len(got) != len(want) {
		t.Fatalf("Load = %v, want %v", got, want)
	}
	for k, w := range want {
		if g := got[k]; g.Outcome != w.Outcome || g.Source != w.Source || !g.At.Equal(w.At) {
			t.Errorf("entry %s = %+v, want %+v", k, g, w)
		}
	}
	fi, err := os.Stat(Path(dir))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %04o, want 0600", fi.Mode().Perm())
	}

	// A new recorder starts from the file.
	r2 := NewRecorder(dir, nil)
	r2.Record("initech", "ok", "sm", at)
	r2.Close()
	if got, _ := Load(dir); len(got) != 3 {
		t.Errorf("after a restart the file holds %d tenants, want 3", len(got))
	}
}

func TestLoadRefusesExposedFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(Path(dir), []byte(`{"version":1,"tenants":{}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil {
		t.Error("Load of a world-readable file succeeded, want an error")
	}
	if _, err := Load(t.TempDir()); !os.IsNotExist(err) {
		t.Errorf("Load of a missing file: err = %v, want not-exist", err)
	}
}

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name, in string
		ok       bool
	}{
		{"valid", `{"version":1,"tenants":{"a":{"outcome":"ok","at":"2026-01-01T00:00:00Z"}}}`, true},
		{"no tenants", `{"version":1}`, true},
		{"wrong version", `{"version":2,"tenants":{}}`, false},
		{"not json", `nope`, false},
		{"too large", `{"version":1,"tenants":{},"x":"` + string(bytes.Repeat([]byte("a"), maxFileSize)) + `"}`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse(bytes.NewReader([]byte(c.in)))
			if got := err == nil; got != c.ok {
				t.Errorf("parse ok = %v (err %v), want %v", got, err, c.ok)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"version":1,"tenants":{"a":{"outcome":"ok","source":"sm","at":"2026-01-01T00:00:00Z"}}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parse(bytes.NewReader(b))
		if err == nil && m == nil {
			t.Error("parse returned a nil map without an error")
		}
	})
}
