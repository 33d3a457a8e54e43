//go:build linux || freebsd

package state

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// realTempDir is t.TempDir with any symbolic link in its path resolved, so
// that the tests' own paths never trip the no-follow walk.
func realTempDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func mkdirAll(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(path, 0o700); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return string(b)
}

// TestWriteFileAtomicNoFollow lays out a tenant jail ("acme") and a victim
// ("globex") and writes through paths that are fine, or that hold a symbolic
// link or something else that is not a file where the write goes.
func TestWriteFileAtomicNoFollow(t *testing.T) {
	const victimEnv = "GLOBEX=secret\n"
	tests := []struct {
		name string
		// setup builds the tree under root and returns the path to write.
		setup       func(t *testing.T, root string) string
		wantSymlink string // the link the *SymlinkError must name (relative to root)
		wantErr     string // else a substring of the error; "" for success
		wantIs      error  // and, if set, what the error must wrap
	}{
		{
			name: "nested new file",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme/app"))
				return filepath.Join(root, "jails/acme/app/.env")
			},
		},
		{
			name: "replace an existing file",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme/app"))
				writeFile(t, filepath.Join(root, "jails/acme/app/.env"), "OLD=1\n", 0o644)
				return filepath.Join(root, "jails/acme/app/.env")
			},
		},
		{
			name: "unclean path",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme/app"))
				return root + "//jails/./acme/../acme/app/.env"
			},
		},
		{
			name: "symlink as the last directory",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme"))
				symlink(t, filepath.Join(root, "jails/globex/app"), filepath.Join(root, "jails/acme/app"))
				return filepath.Join(root, "jails/acme/app/.env")
			},
			wantSymlink: "jails/acme/app",
		},
		{
			name: "relative symlink higher up",
			setup: func(t *testing.T, root string) string {
				symlink(t, "globex", filepath.Join(root, "jails/acme"))
				return filepath.Join(root, "jails/acme/app/.env")
			},
			wantSymlink: "jails/acme",
		},
		{
			name: "symlink to a directory outside the jails",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme"))
				mkdirAll(t, filepath.Join(root, "etc"))
				symlink(t, filepath.Join(root, "etc"), filepath.Join(root, "jails/acme/app"))
				return filepath.Join(root, "jails/acme/app/.env")
			},
			wantSymlink: "jails/acme/app",
		},
		{
			name: "symlink as the leaf",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme/app"))
				symlink(t, filepath.Join(root, "jails/globex/app/.env"), filepath.Join(root, "jails/acme/app/.env"))
				return filepath.Join(root, "jails/acme/app/.env")
			},
			wantSymlink: "jails/acme/app/.env",
		},
		{
			name: "dangling symlink as the leaf",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme/app"))
				symlink(t, filepath.Join(root, "jails/globex/app/new.env"), filepath.Join(root, "jails/acme/app/.env"))
				return filepath.Join(root, "jails/acme/app/.env")
			},
			wantSymlink: "jails/acme/app/.env",
		},
		{
			name: "directory as the leaf",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme/app/.env"))
				return filepath.Join(root, "jails/acme/app/.env")
			},
			wantErr: "exists and is a directory, not a regular file",
		},
		{
			name: "FIFO as the leaf",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme/app"))
				if err := unix.Mkfifo(filepath.Join(root, "jails/acme/app/.env"), 0o600); err != nil {
					t.Fatal(err)
				}
				return filepath.Join(root, "jails/acme/app/.env")
			},
			wantErr: "exists and is a FIFO, not a regular file",
		},
		{
			name: "file as a directory",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme"))
				writeFile(t, filepath.Join(root, "jails/acme/app"), "", 0o600)
				return filepath.Join(root, "jails/acme/app/.env")
			},
			wantErr: "jails/acme/app: it is a regular file, not a directory",
		},
		{
			name: "missing directory",
			setup: func(t *testing.T, root string) string {
				return filepath.Join(root, "jails/nobody/app/.env")
			},
			wantErr: "open directory " + "ROOT/jails/nobody: ",
			wantIs:  fs.ErrNotExist,
		},
		{
			name: "trailing slash",
			setup: func(t *testing.T, root string) string {
				mkdirAll(t, filepath.Join(root, "jails/acme/app"))
				return filepath.Join(root, "jails/acme/app") + "/"
			},
			wantErr: "the path names a directory; give a file path",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := realTempDir(t)
			victim := filepath.Join(root, "jails/globex/app")
			mkdirAll(t, victim)
			writeFile(t, filepath.Join(victim, ".env"), victimEnv, 0o600)
			path := tt.setup(t, root)
			before := tree(t, root)

			err := WriteFileAtomicNoFollow(path, []byte("ACME=1\n"), 0o640)

			if tt.wantSymlink == "" && tt.wantErr == "" {
				if err != nil {
					t.Fatalf("WriteFileAtomicNoFollow(%s) = %v, want success", path, err)
				}
				if got := readString(t, path); got != "ACME=1\n" {
					t.Errorf("content %q, want the new content", got)
				}
				fi, err := os.Lstat(path)
				if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o640 {
					t.Errorf("target %v (%v), want a regular file of mode 0640", fi.Mode(), err)
				}
				if names := dirNames(t, filepath.Dir(path)); !slices.Equal(names, []string{".env"}) {
					t.Errorf("dir holds %v, want only .env", names)
				}
			} else {
				var se *SymlinkError
				switch {
				case err == nil:
					t.Fatalf("WriteFileAtomicNoFollow(%s) succeeded, want it refused", path)
				case tt.wantSymlink != "":
					if !errors.As(err, &se) || se.Path != filepath.Join(root, tt.wantSymlink) {
						t.Fatalf("error %v, want a *SymlinkError naming %s", err, tt.wantSymlink)
					}
					want := filepath.Join(root, tt.wantSymlink) + " is a symbolic link; the broker does not write through symlinks (give the real path)"
					if err.Error() != want {
						t.Errorf("error %q, want %q", err, want)
					}
				default:
					if errors.As(err, &se) {
						t.Errorf("error %v is a *SymlinkError; want another refusal", err)
					}
					if want := strings.ReplaceAll(tt.wantErr, "ROOT", root); !strings.Contains(err.Error(), want) {
						t.Errorf("error %q, want it to contain %q", err, want)
					}
					if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
						t.Errorf("error %v does not wrap %v", err, tt.wantIs)
					}
				}
				if after := tree(t, root); !slices.Equal(after, before) {
					t.Errorf("a refused write changed the tree:\nbefore %v\nafter  %v", before, after)
				}
			}
			if got := readString(t, filepath.Join(victim, ".env")); got != victimEnv {
				t.Errorf("the victim's .env was overwritten")
			}
			if names := dirNames(t, victim); !slices.Equal(names, []string{".env"}) {
				t.Errorf("the victim's dir holds %v, want only .env", names)
			}
		})
	}
}

// tree lists every entry under root with its type, size and mode, sorted.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, strings.TrimPrefix(p, root)+" "+fi.Mode().String()+" "+strings.Repeat("#", int(min(fi.Size(), 64))))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestWriteFileAtomicNoFollowRelative: a relative path is taken against the
// working directory.
func TestWriteFileAtomicNoFollowRelative(t *testing.T) {
	root := realTempDir(t)
	mkdirAll(t, filepath.Join(root, "out"))
	t.Chdir(root)
	if err := WriteFileAtomicNoFollow("out/app.env", []byte("A=1\n"), 0o600); err != nil {
		t.Fatalf("WriteFileAtomicNoFollow(relative) = %v", err)
	}
	if got := readString(t, filepath.Join(root, "out/app.env")); got != "A=1\n" {
		t.Errorf("content %q, want the new content", got)
	}
	if err := WriteFileAtomicNoFollow("app.env", []byte("B=2\n"), 0o600); err != nil {
		t.Fatalf("WriteFileAtomicNoFollow(bare name) = %v", err)
	}
	if got := readString(t, filepath.Join(root, "app.env")); got != "B=2\n" {
		t.Errorf("content %q, want the new content", got)
	}
	symlink(t, "out", filepath.Join(root, "link"))
	err := WriteFileAtomicNoFollow("link/app.env", []byte("C=3\n"), 0o600)
	var se *SymlinkError
	if !errors.As(err, &se) || se.Path != filepath.Join(root, "link") {
		t.Errorf("relative write through a link: %v, want a *SymlinkError naming %s", err, filepath.Join(root, "link"))
	}
	if got := readString(t, filepath.Join(root, "out/app.env")); got != "A=1\n" {
		t.Errorf("the write through a link changed the file behind it")
	}
}

// TestWriteFileAtomicNoFollowSwap: once the directory is open, replacing it
// with a symbolic link (here, mid-write) cannot redirect the write; it lands
// in the directory that was opened.
func TestWriteFileAtomicNoFollowSwap(t *testing.T) {
	for _, at := range []string{"write", "rename"} {
		t.Run(at, func(t *testing.T) {
			root := realTempDir(t)
			app := filepath.Join(root, "jails/acme/app")
			victim := filepath.Join(root, "jails/globex/app")
			mkdirAll(t, app)
			mkdirAll(t, victim)
			writeFile(t, filepath.Join(victim, ".env"), "GLOBEX=1\n", 0o600)
			swapped := false
			atomicHook = func(step string) error {
				if step == at && !swapped {
					swapped = true
					if err := os.Rename(app, app+".moved"); err != nil {
						return err
					}
					return os.Symlink(victim, app)
				}
				return nil
			}
			defer func() { atomicHook = nil }()
			if err := WriteFileAtomicNoFollow(filepath.Join(app, ".env"), []byte("ACME=1\n"), 0o600); err != nil {
				t.Fatalf("WriteFileAtomicNoFollow = %v", err)
			}
			if !swapped {
				t.Fatalf("the hook never ran at %s", at)
			}
			if got := readString(t, filepath.Join(victim, ".env")); got != "GLOBEX=1\n" {
				t.Errorf("the swap redirected the write into the victim's directory")
			}
			if names := dirNames(t, victim); !slices.Equal(names, []string{".env"}) {
				t.Errorf("the victim's dir holds %v, want only .env", names)
			}
			if got := readString(t, filepath.Join(app+".moved", ".env")); got != "ACME=1\n" {
				t.Errorf("the opened directory holds %q, want the new content", got)
			}
		})
	}
}

// TestWriteFileAtomicNoFollowFaults injects a fault at each step (and, on
// Linux, at each step of the named fallback after a failed link): the
// write fails, the previous file is intact and no temporary file is left.
func TestWriteFileAtomicNoFollowFaults(t *testing.T) {
	injected := errors.New("injected fault")
	type fault struct {
		name  string
		fail  func(step string, n int) bool // n counts the step's runs from 1
		steps string                        // the steps that run, in order
	}
	faults := []fault{
		{"write", func(s string, n int) bool { return s == "write" }, "[write]"},
		{"sync", func(s string, n int) bool { return s == "sync" }, "[write sync]"},
		{"rename", func(s string, n int) bool { return s == "rename" }, "[write sync rename]"},
	}
	if runtime.GOOS == "linux" {
		faults = []fault{
			{"write", func(s string, n int) bool { return s == "write" }, "[write]"},
			{"sync", func(s string, n int) bool { return s == "sync" }, "[write sync]"},
			{"rename", func(s string, n int) bool { return s == "rename" }, "[write sync link rename]"},
			{"link then write", func(s string, n int) bool { return s == "link" || s == "write" && n == 2 }, "[write sync link write]"},
			{"link then sync", func(s string, n int) bool { return s == "link" || s == "sync" && n == 2 }, "[write sync link write sync]"},
			{"link then rename", func(s string, n int) bool { return s == "link" || s == "rename" }, "[write sync link write sync rename]"},
		}
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			dir := filepath.Join(realTempDir(t), "app")
			mkdirAll(t, dir)
			path := filepath.Join(dir, "out.env")
			writeFile(t, path, "OLD=1\n", 0o600)
			var seen []string
			count := map[string]int{}
			atomicHook = func(s string) error {
				seen = append(seen, s)
				count[s]++
				if f.fail(s, count[s]) {
					return injected
				}
				return nil
			}
			defer func() { atomicHook = nil }()

			err := WriteFileAtomicNoFollow(path, []byte("NEW=2\n"), 0o640)
			if !errors.Is(err, injected) {
				t.Fatalf("WriteFileAtomicNoFollow = %v, want the injected fault", err)
			}
			if got := "[" + strings.Join(seen, " ") + "]"; got != f.steps {
				t.Errorf("steps run: %s, want %s", got, f.steps)
			}
			if got := readString(t, path); got != "OLD=1\n" {
				t.Errorf("after the fault the file holds %q, want the old content", got)
			}
			if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
				t.Errorf("after the fault the file has mode %v, want the old 0600", fi.Mode().Perm())
			}
			if names := dirNames(t, dir); !slices.Equal(names, []string{"out.env"}) {
				t.Errorf("after the fault the dir holds %v, want only out.env", names)
			}
		})
	}
}

// TestWriteFileAtomicNoFollowLinkFallback: when the unnamed file cannot be
// named, the named fallback (created relative to the open directory) still
// writes the file, at exactly perm, and leaves nothing else behind.
func TestWriteFileAtomicNoFollowLinkFallback(t *testing.T) {
	dir := filepath.Join(realTempDir(t), "app")
	mkdirAll(t, dir)
	path := filepath.Join(dir, "out.env")
	var seen []string
	atomicHook = func(s string) error {
		seen = append(seen, s)
		if s == "link" {
			return errors.New("injected link failure")
		}
		return nil
	}
	defer func() { atomicHook = nil }()
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	if err := WriteFileAtomicNoFollow(path, []byte("A=1\n"), 0o640); err != nil {
		t.Fatalf("WriteFileAtomicNoFollow = %v", err)
	}
	if got := readString(t, path); got != "A=1\n" {
		t.Errorf("content %q, want the new content", got)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want exactly 0640 whatever the umask", fi.Mode().Perm())
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"out.env"}) {
		t.Errorf("dir holds %v, want only out.env", names)
	}
	want := "[write sync rename]"
	if runtime.GOOS == "linux" {
		want = "[write sync link write sync rename]"
	}
	if got := "[" + strings.Join(seen, " ") + "]"; got != want {
		t.Errorf("steps %s, want %s", got, want)
	}
}
