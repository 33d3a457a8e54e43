package hardening

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestProcessHygiene checks what a running `broker serve` looks like from
// outside: umask 077, core dumps off (RLIMIT_CORE 0/0), the process marked
// non-dumpable (its /proc entries then belong to root, not to its uid, so
// other processes of its uid cannot read its memory or environment), every
// file it wrote owner-only; and that `broker exec` gives its child the
// tenant's env but not the caller token.
//
// As root the broker is run as uid 65534, so that the /proc ownership check
// can tell "non-dumpable" (root) from "dumpable" (65534); as any other user
// it runs as that user.
func TestProcessHygiene(t *testing.T) {
	w := newSMWorld(t)
	acme := w.addTenant(t, "acme", 3, 0)
	uid := os.Getuid()
	var attr *syscall.SysProcAttr
	if uid == 0 {
		uid = 65534
		// A site nobody can reach: a 0711 root dir holding files owned by
		// the broker's uid.
		root, err := os.MkdirTemp("", "hbh-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(root) })
		os.Chmod(root, 0o711)
		s := &site{dir: root, policy: filepath.Join(root, "policy.json"), envFile: filepath.Join(root, "provider.env"),
			stateDir: filepath.Join(root, "state"), sock: filepath.Join(root, "run", "b.sock")}
		os.Mkdir(s.stateDir, 0o700)
		os.Mkdir(filepath.Dir(s.sock), 0o700)
		w.site = s
		attr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	w.write(t, "60s")
	tok := mint(t, w.site, "acme")
	if attr != nil {
		filepath.WalkDir(w.site.dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && p != w.site.dir {
				os.Lchown(p, uid, uid)
			}
			return nil
		})
	}
	// The broker starts with a permissive umask and a secret in its own
	// environment that no child needs.
	old := syscall.Umask(0o022)
	b := startBroker(t, w.site, []string{"HARDENING_PARENT_SECRET=parent-secret-" + randHex(8)}, attr)
	syscall.Umask(old)
	pid := b.pid()
	if r := b.fetch(t, tok, "acme"); r.code != 0 || !bytes.Equal(r.stdout, acme.dotenv(t)) {
		t.Fatalf("fetch: exit %d; stderr %s", r.code, r.stderr)
	}

	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(status, []byte("\nUmask:\t0077\n")) {
		t.Errorf("broker umask is not 0077: %q", grepLine(status, "Umask:"))
	}
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(grepLine(limits, "Max core file size")); len(f) < 6 || f[4] != "0" || f[5] != "0" {
		t.Errorf("core dumps are not disabled: %q", grepLine(limits, "Max core file size"))
	}
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/environ", pid), &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Uid) == uid {
		t.Errorf("/proc/%d/environ belongs to the broker's uid %d: the process is dumpable", pid, uid)
	}
	// Everything the broker wrote under its state dir is owner-only.
	n := 0
	filepath.WalkDir(w.site.stateDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err == nil && fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: group or others may read it", p, fi.Mode().Perm())
		}
		n++
		return nil
	})
	if fi, err := os.Stat(w.site.sock); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("socket mode %v (%v), want owner-only", fi.Mode().Perm(), err)
	}
	t.Logf("broker pid %d as uid %d: umask 0077, core limit 0, /proc owner %d (non-dumpable), %d state entries owner-only", pid, uid, st.Uid, n)

	// broker exec: the child gets the tenant's env, not the caller token.
	r := cli(t, []string{"BROKER_TOKEN=" + tok, "BROKER_SOCKET=" + w.site.sock}, "acme",
		"exec", "--tenant", "acme", "--", "/bin/cat", "/proc/self/environ")
	if r.code != 0 {
		t.Fatalf("broker exec: exit %d; stderr %s", r.code, r.stderr)
	}
	childEnv := map[string]string{}
	for _, kv := range bytes.Split(r.stdout, []byte{0}) {
		k, v, _ := strings.Cut(string(kv), "=")
		childEnv[k] = v
	}
	if _, ok := childEnv["BROKER_TOKEN"]; ok || bytes.Contains(r.stdout, []byte(tok)) {
		t.Errorf("the exec child's environment holds the caller token")
	}
	for k, v := range acme.env {
		if childEnv[k] != v {
			t.Errorf("the exec child's %s is not the tenant's value", k)
		}
	}
}

func grepLine(b []byte, prefix string) string {
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// TestLeakScannerFinds shows that the leak scan would catch a leak: a
// value planted in a capture is found, an allowed owner is not reported,
// and a streamed capture is searched too.
func TestLeakScannerFinds(t *testing.T) {
	l := &leakRecorder{}
	l.secret("planted", "acme", "planted-value-0123456789")
	l.secret("token", "", "brk_abcdefghijkl_secret")
	l.capture("log", []byte(`{"msg":"oops","v":"planted-value-0123456789"}`))
	l.capture("acme stdout", []byte("K=\"planted-value-0123456789\"\n"), "acme")
	l.capture("clean", []byte("nothing here brk_abc"))
	sw := l.stream("streamed")
	sw.Write([]byte("... brk_abcdefghijkl_secret ...\n"))
	hits, _ := l.scan()
	want := []string{`capture "log" holds secret planted`, `capture "streamed" holds secret token`}
	if fmt.Sprint(hits) != fmt.Sprint(want) {
		t.Errorf("hits %q, want %q", hits, want)
	}
}
