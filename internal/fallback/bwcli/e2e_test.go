package bwcli

import (
	"context"
	"errors"
	"github.com/hostd/broker/internal/testutil"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/upstream/vwserver"
)

// harness runs calls of one backend against the shared upstream and checks
// the invariants after each.
type harness struct {
	t    *testing.T
	w    *world
	b    *Backend
	mode string
	sink *logSink
	// sessions seen in bw children's environments (exec mode), newest last;
	// callSessions are those of the latest call.
	sessions, callSessions []string
	// pids of every bw child seen.
	pids []int
}

func newHarness(t *testing.T, mode string, mod func(*Config)) *harness {
	w := newWorld(t)
	h := &harness{t: t, w: w, mode: mode, sink: &logSink{}}
	h.b = w.newBackend(t, mode, h.sink, mod)
	t.Cleanup(func() {
		h.b.Close()
		h.checkLog()
	})
	return h
}

// secrets are the values that must never reach argv or the log.
func (h *harness) secrets() map[string]string {
	return map[string]string{
		"alice's password": h.w.alicePW, "bob's password": h.w.bobPW,
		"alice's client secret": h.w.alice.ClientSecret, "bob's client secret": h.w.bob.ClientSecret,
	}
}

// fetch runs one Fetch while watching /proc; it checks argv and the child
// environments and remembers the session keys seen.
func (h *harness) fetch(ctx context.Context, ten fetch.Tenant) (fetch.Env, error, time.Duration) {
	h.t.Helper()
	pw := watchProcs(h.b.cfg.StateDir, h.secrets())
	start := time.Now()
	env, err := h.b.Fetch(ctx, ten)
	d := time.Since(start)
	pw.finish().check(h.t)
	h.callSessions = pw.sessionKeys()
	h.pids = append(h.pids, pw.pids()...)
	for _, s := range h.callSessions {
		if !slices.Contains(h.sessions, s) {
			h.sessions = append(h.sessions, s)
		}
	}
	return env, err, d
}

// checkLocked checks that the tenant's vault is locked: no session-wrapped
// key in data.json, and serve's status (serve mode) or `bw status` with every
// session key seen (exec mode) is not "unlocked". It also checks the
// backend counted no unlocked vault.
func (h *harness) checkLocked(ten fetch.Tenant) {
	h.t.Helper()
	dir := dataDirOf(h.b, ten)
	if p := protectedKeys(h.t, dir); len(p) > 0 {
		h.t.Errorf("data.json keeps %d session-wrapped key entries after the call", len(p))
	}
	switch h.mode {
	case ModeServe:
		if st := serveStatus(h.t, dir); st == "unlocked" {
			h.t.Errorf("bw serve status = %q after the call, want locked", st)
		}
	case ModeExec:
		// The keys of the latest call, or else the last key seen (a key
		// dies with any lock or later unlock, so older ones prove nothing new).
		keys := h.callSessions
		if len(keys) == 0 && len(h.sessions) > 0 {
			keys = h.sessions[len(h.sessions)-1:]
		}
		for i, s := range keys {
			if st := cliStatus(h.t, h.w, dir, s); st == "unlocked" {
				h.t.Errorf("bw status with session key #%d = %q after the call, want locked", i, st)
			}
		}
	}
	if n := h.b.Stats().UnlockedAfterLock; n != 0 {
		h.t.Errorf("Stats().UnlockedAfterLock = %d, want 0", n)
	}
}

// checkGone checks that no bw process of the backend is left, not even a
// zombie: Close must have waited for every child.
func (h *harness) checkGone() {
	h.t.Helper()
	if left := bwProcesses(h.b.cfg.StateDir); len(left) > 0 {
		h.t.Errorf("processes left after Close: %v", left)
	}
	if left := stillThere(h.pids); len(left) > 0 {
		h.t.Errorf("bw children not reaped after Close: pids %v", left)
	}
}

// checkLog checks that the backend's log holds no secret value.
func (h *harness) checkLog() {
	log := h.sink.String()
	for name, v := range h.secrets() {
		if strings.Contains(log, v) {
			h.t.Errorf("backend log holds %s", name)
		}
	}
	for _, s := range h.sessions {
		if strings.Contains(log, s) {
			h.t.Errorf("backend log holds a session key")
		}
	}
	for k, v := range hardValues {
		if len(v) > 3 && strings.Contains(log, v) {
			h.t.Errorf("backend log holds the value of %s", k)
		}
	}
}

// wantKind checks err's kind and that its text holds no secret.
func (h *harness) wantKind(err error, want fetch.Kind) {
	h.t.Helper()
	if err == nil {
		h.t.Fatalf("err = nil, want kind %v", want)
	}
	var fe *fetch.Error
	if !errors.As(err, &fe) {
		h.t.Fatalf("err %v is not a *fetch.Error", err)
	}
	if got := fetch.KindOf(err); got != want {
		h.t.Errorf("kind = %v (%v), want %v", got, err, want)
	}
	for name, v := range h.secrets() {
		if strings.Contains(err.Error(), v) {
			h.t.Errorf("error text holds %s", name)
		}
	}
	if fe.Tenant == "" {
		h.t.Errorf("error %v does not name the tenant", err)
	}
}

// wantEnv compares env with want byte for byte (names only in messages).
func wantEnv(t *testing.T, env fetch.Env, want map[string]string) {
	t.Helper()
	if !slices.Equal(env.Keys(), fetch.Env(want).Keys()) {
		t.Fatalf("keys = %v, want %v", env.Keys(), fetch.Env(want).Keys())
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("value of %s differs from the seeded value (got %d bytes, want %d)", k, len(env[k]), len(v))
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// runModeTests is the shared scenario list of both modes. Subtests run in
// order on one backend and one data dir (a bw process costs seconds).
func runModeTests(t *testing.T, mode string) {
	h := newHarness(t, mode, nil)
	w := h.w
	alice := w.aliceTenant()
	ctx := context.Background()
	want := maps.Clone(w.acmeItems)
	var durations []time.Duration

	t.Run("hard values byte-exact and locked", func(t *testing.T) {
		h.t = t
		env, err, d := h.fetch(ctx, alice)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		t.Logf("first Fetch (login included): %v", d)
		wantEnv(t, env, want)
		h.checkLocked(alice)
		st := h.b.Stats()
		if st.Logins != 1 {
			t.Errorf("Stats().Logins = %d, want 1", st.Logins)
		}
		// The first call after a login reads after a fresh unlock, whatever
		// its sync downloaded (serve mode).
		if mode == ModeServe && st.Refreshes < 1 {
			t.Errorf("Stats().Refreshes after the first call = %d, want at least 1", st.Refreshes)
		}
		if st.Incomplete != 0 {
			t.Errorf("Stats().Incomplete = %d, want 0", st.Incomplete)
		}
	})

	// Serve mode only: an exec call costs ~12 s; exec's login count is
	// checked at the end, and a change upstream in "works again".
	serveOnly := func(name string, f func(t *testing.T)) {
		if mode == ModeServe {
			t.Run(name, f)
		}
	}

	serveOnly("check", func(t *testing.T) {
		h.t = t
		if err := h.b.Check(ctx, alice); err != nil {
			t.Fatalf("Check: %v", err)
		}
		bad := alice
		bad.Password = "not the password"
		h.wantKind(h.b.Check(ctx, bad), fetch.KindCredentials)
		h.checkLocked(alice)
		// The credentials work but the collection does not resolve.
		missing := alice
		missing.Collection = "no-such-collection"
		err := h.b.Check(ctx, missing)
		h.wantKind(err, fetch.KindConfig)
		if !errors.Is(err, fetch.ErrNotResolved) || !strings.Contains(err.Error(), "no-such-collection") || !strings.Contains(err.Error(), "not found") {
			t.Errorf("Check with a missing collection = %v, want the collection-not-found error naming it", err)
		}
		h.checkLocked(alice)
	})

	serveOnly("sequential fetches log in once", func(t *testing.T) {
		h.t = t
		w.srv.ResetStats()
		refreshes := h.b.Stats().Refreshes
		n := 9
		for range n {
			env, err, d := h.fetch(ctx, alice)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			durations = append(durations, d)
			wantEnv(t, env, want)
		}
		if got := w.srv.Stats().Logins; got != 0 {
			t.Errorf("upstream logins during %d fetches after the first = %d, want 0", n, got)
		}
		if got := h.b.Stats().Logins; got != 1 {
			t.Errorf("Stats().Logins after %d fetches = %d, want 1", n+1, got)
		}
		if got := w.srv.Stats().ByRoute["GET /api/sync"]; got != 0 {
			t.Errorf("full syncs of an unchanged vault = %d, want 0", got)
		}
		// An unchanged vault costs no second unlock.
		if got := h.b.Stats().Refreshes - refreshes; got != 0 {
			t.Errorf("fresh unlocks during %d fetches of an unchanged vault = %d, want 0", n, got)
		}
		t.Logf("%s mode: median Fetch of an unchanged vault over %d calls: %v", mode, len(durations), median(durations))
		h.checkLocked(alice)
	})

	serveOnly("changed items are seen by the next call", func(t *testing.T) {
		h.t = t
		rounds := 3
		var added string
		refreshes := h.b.Stats().Refreshes
		for i := range rounds {
			v := "version-" + string(rune('a'+i)) + "\n$x"
			if err := w.srv.UpdateItem(w.changing, v); err != nil {
				t.Fatal(err)
			}
			want["CHANGING"] = v
			switch i {
			case 1:
				added = w.srv.AddNote(w.org, w.acme, "ADDED_LATER", "new note")
				want["ADDED_LATER"] = "new note"
			case 2:
				if err := w.srv.DeleteItem(added); err != nil {
					t.Fatal(err)
				}
				delete(want, "ADDED_LATER")
			}
			env, err, d := h.fetch(ctx, alice)
			if err != nil {
				t.Fatalf("round %d: Fetch: %v", i, err)
			}
			t.Logf("round %d: Fetch after a change: %v", i, d)
			wantEnv(t, env, want)
		}
		w.acmeItems["CHANGING"] = want["CHANGING"]
		// Each sync that downloaded a change is followed by a fresh unlock.
		if got := h.b.Stats().Refreshes - refreshes; got < int64(rounds) {
			t.Errorf("fresh unlocks after %d changed syncs = %d, want at least %d", rounds, got, rounds)
		}
		h.checkLocked(alice)
	})

	t.Run("wrong password", func(t *testing.T) {
		h.t = t
		bad := alice
		bad.Password = "not the password"
		_, err, d := h.fetch(ctx, bad)
		h.wantKind(err, fetch.KindCredentials)
		t.Logf("refused in %v: %v", d, err)
		h.checkLocked(alice)
	})

	t.Run("upstream down", func(t *testing.T) {
		h.t = t
		w.srv.Stop()
		_, err, _ := h.fetch(ctx, alice)
		if err2 := w.srv.StartAt(w.addr); err2 != nil {
			t.Fatalf("restart upstream: %v", err2)
		}
		h.wantKind(err, fetch.KindUnavailable)
		h.checkLocked(alice)
	})

	t.Run("stalled step", func(t *testing.T) {
		h.t = t
		old := h.b.cfg.StepTimeout
		h.b.cfg.StepTimeout = 4 * time.Second
		if mode == ModeExec {
			h.b.cfg.StepTimeout = 8 * time.Second // an unlock process alone takes 3–4 s
		}
		defer func() { h.b.cfg.StepTimeout = old }()
		w.srv.InjectFault(vwserver.Fault{Route: "/api/accounts/revision-date", Times: 1, Delay: 60 * time.Second})
		defer w.srv.ClearFaults()
		_, err, d := h.fetch(ctx, alice)
		h.wantKind(err, fetch.KindTimeout)
		t.Logf("stalled call returned after %v", d)
		h.checkLocked(alice)
	})

	t.Run("caller cancel mid-call", func(t *testing.T) {
		h.t = t
		w.srv.InjectFault(vwserver.Fault{Route: "/api/accounts/revision-date", Times: 1, Delay: 60 * time.Second})
		defer w.srv.ClearFaults()
		// Reset before the watcher starts: the stalled-step case above left
		// the revision-date counter non-zero, which would cancel at once.
		w.srv.ResetStats()
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			// Cancel while the sync waits on the stalled upstream.
			for w.srv.Stats().ByRoute["GET /api/accounts/revision-date"] == 0 {
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
		}()
		_, err, d := h.fetch(cctx, alice)
		h.wantKind(err, fetch.KindCanceled)
		t.Logf("canceled call returned after %v", d)
		h.checkLocked(alice)
	})

	t.Run("works again after the faults", func(t *testing.T) {
		h.t = t
		if mode == ModeExec {
			// Also: a change upstream is seen by the next call.
			v := "exec-version\n"
			if err := w.srv.UpdateItem(w.changing, v); err != nil {
				t.Fatal(err)
			}
			want["CHANGING"], w.acmeItems["CHANGING"] = v, v
		}
		env, err, _ := h.fetch(ctx, alice)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		wantEnv(t, env, want)
		h.checkLocked(alice)
		if mode == ModeServe && h.b.Stats().ServeRestarts == 0 {
			t.Errorf("Stats().ServeRestarts = 0 after killed serves")
		}
	})

	serveOnly("lost login and dead serve", func(t *testing.T) {
		h.t = t
		dir := dataDirOf(h.b, alice)
		d := h.b.dirs[filepath.Base(dir)]
		if d.serve == nil {
			t.Fatal("no bw serve running between calls")
		}
		// bw serve dies, and the login is gone (as when the upstream
		// revoked it): the next call restarts serve and logs in again.
		killGroup(d.serve.cmd.Process.Pid)
		<-d.serve.done
		ctxL, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctxL, w.bw, "logout")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "BITWARDENCLI_APPDATA_DIR=" + dir, "BW_NOINTERACTION=true"}
		if err := cmd.Run(); err != nil {
			t.Fatalf("bw logout: %v", err)
		}
		before := h.b.Stats()
		env, err, _ := h.fetch(ctx, alice)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		wantEnv(t, env, want)
		after := h.b.Stats()
		if after.Logins != before.Logins+1 {
			t.Errorf("logins = %d, want %d", after.Logins, before.Logins+1)
		}
		if after.ServeRestarts <= before.ServeRestarts {
			t.Errorf("ServeRestarts = %d, want more than %d", after.ServeRestarts, before.ServeRestarts)
		}
		h.checkLocked(alice)
	})

	t.Run("wrong client secret", func(t *testing.T) {
		h.t = t
		// Serve mode: alice's logged-in dir sees a changed key (a rotation):
		// it logs in again, and is refused. Exec mode: bob's fresh dir (a
		// login in exec mode costs seconds more than here).
		bad := alice
		if mode == ModeExec {
			bad = w.bobTenant()
		}
		bad.ClientSecret = "wrongwrongwrongwrongwrongwrong"
		_, err, _ := h.fetch(ctx, bad)
		h.wantKind(err, fetch.KindCredentials)
		h.checkLocked(bad)
		// Again: refused at once, without a login at the upstream.
		w.srv.ResetStats()
		_, err = h.b.Fetch(ctx, bad)
		h.wantKind(err, fetch.KindCredentials)
		if got := w.srv.Stats().Logins; got != 0 {
			t.Errorf("upstream logins for a refused key retried at once = %d, want 0", got)
		}
		if mode == ModeExec {
			return
		}
		// The right key logs in again.
		env, err, _ := h.fetch(ctx, alice)
		if err != nil {
			t.Fatalf("Fetch with the right key: %v", err)
		}
		wantEnv(t, env, want)
		h.checkLocked(alice)
	})

	t.Run("shutdown mid-call leaves it locked and no bw process", func(t *testing.T) {
		h.t = t
		w.srv.InjectFault(vwserver.Fault{Route: "/api/accounts/revision-date", Times: 1, Delay: 60 * time.Second})
		defer w.srv.ClearFaults()
		w.srv.ResetStats()
		go func() {
			for w.srv.Stats().ByRoute["GET /api/accounts/revision-date"] == 0 {
				time.Sleep(10 * time.Millisecond)
			}
			h.b.Close()
		}()
		_, err, _ := h.fetch(ctx, alice)
		h.wantKind(err, fetch.KindUnavailable)
		if err := h.b.Close(); err != nil {
			t.Fatal(err)
		}
		h.checkGone()
		_, err = h.b.Fetch(ctx, alice)
		h.wantKind(err, fetch.KindUnavailable)
		h.checkLocked(alice)
		st := h.b.Stats()
		t.Logf("stats %+v", st)
		// One login, one refused login, and (serve mode) the login after the
		// lost one and after the refused one.
		wantLogins := int64(4)
		if mode == ModeExec {
			wantLogins = 2
		}
		if st.Logins != wantLogins {
			t.Errorf("Stats().Logins = %d, want %d", st.Logins, wantLogins)
		}
	})
}

// Each top-level test has an upstream of its own, so they run in parallel:
// bw processes spend most of their wall time idle.

func TestServeMode(t *testing.T) {
	t.Parallel()
	runModeTests(t, ModeServe)
}

func TestExecMode(t *testing.T) {
	t.Parallel()
	runModeTests(t, ModeExec)
}

// TestParallelCredentialSets fetches two tenants on different credential
// sets at the same time: their calls must overlap.
func TestParallelCredentialSets(t *testing.T) {
	t.Parallel()
	h := newHarness(t, ModeServe, nil)
	w := h.w
	tenants := []fetch.Tenant{w.aliceTenant(), w.bobTenant()}
	ctx := context.Background()
	// Log both in first, so that the timed calls are plain fetches.
	for _, ten := range tenants {
		if _, err := h.b.Fetch(ctx, ten); err != nil {
			t.Fatalf("Fetch %s: %v", ten.Name, err)
		}
	}
	// Each sync stalls 1.5 s at the upstream: serialized calls could not
	// overlap.
	w.srv.InjectFault(vwserver.Fault{Route: "/api/accounts/revision-date", Times: 2, Delay: 1500 * time.Millisecond})
	defer w.srv.ClearFaults()
	type span struct{ start, end time.Time }
	spans := make([]span, len(tenants))
	errs := make([]error, len(tenants))
	var wg sync.WaitGroup
	for i, ten := range tenants {
		wg.Go(func() {
			spans[i].start = time.Now()
			_, errs[i] = h.b.Fetch(ctx, ten)
			spans[i].end = time.Now()
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Fetch %s: %v", tenants[i].Name, err)
		}
	}
	a, b := spans[0], spans[1]
	if !(a.start.Before(b.end) && b.start.Before(a.end)) {
		t.Errorf("calls did not overlap: [%v, %v] and [%v, %v]", a.start, a.end, b.start, b.end)
	}
	for _, ten := range tenants {
		h.checkLocked(ten)
	}
	if err := h.b.Close(); err != nil {
		t.Fatal(err)
	}
	h.checkGone()
}

// TestKilledUnlockIsLocked uses a bw whose unlock prints the session key and
// then hangs: the step is killed at its timeout and the vault is locked
// with the printed key verified dead.
func TestKilledUnlockIsLocked(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(dir, fakeHangName)
	if err := os.Symlink(self, fake); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, fakeRealFile), []byte(testutil.BW(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, ModeExec, func(c *Config) {
		c.BW = fake
		c.StepTimeout = 12 * time.Second
	})
	alice := h.w.aliceTenant()
	_, err, d := h.fetch(context.Background(), alice)
	h.wantKind(err, fetch.KindTimeout)
	t.Logf("call with a hung unlock returned after %v", d)
	if len(h.sessions) == 0 {
		t.Fatalf("the lock was not verified with the printed session key")
	}
	h.checkLocked(alice)
	if err := h.b.Close(); err != nil {
		t.Fatal(err)
	}
	h.checkGone()
}
