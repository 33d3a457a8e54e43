package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFile writes a file with exactly mode perm (whatever the umask).
func writeFile(t *testing.T, path, content string, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
}

// foreignOwned returns a regular file not owned by the effective uid: a
// temp file given to another uid when running as root, else /etc/hosts
// (owned by root).
func foreignOwned(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		return "/etc/hosts"
	}
	p := filepath.Join(t.TempDir(), "foreign")
	writeFile(t, p, "X=1\n", 0o600)
	if err := os.Chown(p, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckPrivateFile(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok")
	writeFile(t, ok, "X=1\n", 0o600)
	readable := filepath.Join(dir, "env")
	writeFile(t, readable, "X=1\n", 0o644)
	writable := filepath.Join(dir, "gw")
	writeFile(t, writable, "X=1\n", 0o620)
	execOther := filepath.Join(dir, "ox")
	writeFile(t, execOther, "X=1\n", 0o701)
	spaced := filepath.Join(dir, "my env")
	writeFile(t, spaced, "X=1\n", 0o640)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(ok, link); err != nil {
		t.Fatal(err)
	}
	foreign := foreignOwned(t)

	tests := []struct {
		name, path, want string
	}{
		{"0600 file", ok, ""},
		{"0644 file", readable, fmt.Sprintf("file %s is readable by group or others (mode 0644); run: chmod 600 %s", readable, readable)},
		{"0620 file", writable, fmt.Sprintf("file %s is writable by group or others (mode 0620); run: chmod 600 %s", writable, writable)},
		{"0701 file", execOther, fmt.Sprintf("file %s is accessible by group or others (mode 0701); run: chmod 600 %s", execOther, execOther)},
		{"path with a space", spaced, fmt.Sprintf("file %s is readable by group or others (mode 0640); run: chmod 600 '%s'", spaced, spaced)},
		{"symlink", link, fmt.Sprintf("file %s is a symbolic link, which is refused; use the real path %s", link, ok)},
		{"directory", dir, fmt.Sprintf("file %s is not a regular file", dir)},
		{"other owner", foreign, fmt.Sprintf("file %s is owned by uid ", foreign)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPrivateFile(tt.path)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("CheckPrivateFile = %v, want nil", err)
			case tt.want != "" && err == nil:
				t.Errorf("CheckPrivateFile = nil, want %q", tt.want)
			case tt.want != "" && !strings.HasPrefix(err.Error(), tt.want):
				t.Errorf("CheckPrivateFile = %q, want %q", err, tt.want)
			}
		})
	}
	err := CheckPrivateFile(foreign)
	if want := fmt.Sprintf("; run: chown %d %s", os.Geteuid(), foreign); err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("foreign owner: error = %v, want suffix %q", err, want)
	}
	if err := CheckPrivateFile(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: error = %v, want fs.ErrNotExist", err)
	}
}

func TestCheckPrivateDir(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, perm os.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
		return p
	}
	private := mk("private", 0o700)
	open := mk("open", 0o755)
	groupX := mk("gx", 0o710)
	link := filepath.Join(base, "link")
	if err := os.Symlink(private, link); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	writeFile(t, file, "", 0o600)

	tests := []struct {
		name, path, want string
	}{
		{"0700 dir", private, ""},
		{"0755 dir", open, fmt.Sprintf("directory %s is readable by group or others (mode 0755); run: chmod 700 %s", open, open)},
		{"0710 dir", groupX, fmt.Sprintf("directory %s is accessible by group or others (mode 0710); run: chmod 700 %s", groupX, groupX)},
		{"symlink to dir", link, fmt.Sprintf("directory %s is a symbolic link, which is refused; use the real path %s", link, private)},
		{"file", file, fmt.Sprintf("directory %s is not a directory", file)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPrivateDir(tt.path)
			if tt.want == "" {
				if err != nil {
					t.Errorf("CheckPrivateDir = %v, want nil", err)
				}
				return
			}
			if err == nil || err.Error() != tt.want {
				t.Errorf("CheckPrivateDir = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestEnsureStateDir(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "state")
	if err := EnsureStateDir(dir); err != nil {
		t.Fatalf("EnsureStateDir(new) = %v", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := fi.Mode().Perm(), os.FileMode(0o700); !fi.IsDir() || g != w {
		t.Errorf("created %v, want a dir with mode %v", fi.Mode(), w)
	}
	if err := EnsureStateDir(dir); err != nil {
		t.Errorf("EnsureStateDir(existing) = %v", err)
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("state dir %s is readable by group or others (mode 0750); run: chmod 700 %s", dir, dir)
	if err := EnsureStateDir(dir); err == nil || err.Error() != want {
		t.Errorf("EnsureStateDir(0750) = %v, want %q", err, want)
	}
}

func TestShellQuote(t *testing.T) {
	tests := map[string]string{
		"/etc/broker/env": "/etc/broker/env",
		"/a b":            "'/a b'",
		"/it's":           `'/it'\''s'`,
		"/x;rm -rf /":     "'/x;rm -rf /'",
		"":                "''",
	}
	for in, want := range tests {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
	if g, w := command("chmod", "600", "-env"), "chmod 600 -- -env"; g != w {
		t.Errorf("command = %q, want %q", g, w)
	}
}
