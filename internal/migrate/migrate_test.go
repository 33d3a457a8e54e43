package migrate

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/upstream/smserver"
)

// mapSource is a Source serving a fixed env (the fallback's side is tested
// with the real bw CLI in cmd/broker).
type mapSource struct {
	env   fetch.Env
	calls int
}

func (m *mapSource) Fetch(ctx context.Context, t fetch.Tenant) (fetch.Env, error) {
	m.calls++
	return maps.Clone(m.env), nil
}

// hard are values that must survive the trip byte for byte.
var hard = fetch.Env{
	"MULTILINE": "line1\nline2\r\n",
	"QUOTES":    `he said "hi" and 'bye'`,
	"DOLLARS":   "$HOME ${PATH} `id` $(id)",
	"BACKSLASH": `back\slash\n\\`,
	"ZIP":       "007",
	"UNICODE":   "ünïcødé 😀 日本語",
	"SPACES":    "  padded  \t",
	"HASH":      "#not-a-comment = x",
}

type smWorld struct {
	srv              *smserver.Server
	org, project     string
	migTok, readTok  fetch.Secret
	sm               *fetch.SM
	otherSM          *fetch.SM // a second client, for changes made "by someone else"
	tenant           fetch.Tenant
	writesBeforeTest int64
}

func newSMWorld(t *testing.T) *smWorld {
	t.Helper()
	srv := smserver.New(smserver.Options{})
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	w := &smWorld{srv: srv}
	w.org = srv.AddOrganization("Org")
	w.project = srv.AddProject(w.org, "globex")
	mig := srv.AddMachineAccount(w.org)
	srv.GrantWrite(mig, w.project)
	rd := srv.AddMachineAccount(w.org)
	srv.GrantRead(rd, w.project)
	m, _ := srv.NewAccessToken(mig)
	r, _ := srv.NewAccessToken(rd)
	w.migTok, w.readTok = fetch.Secret(m), fetch.Secret(r)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	newSM := func() *fetch.SM {
		sm, err := fetch.NewSM(fetch.SMConfig{APIURL: srv.APIURL(), IdentityURL: srv.IdentityURL(), StateDir: filepath.Join(t.TempDir(), "sm"), Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sm.Close)
		return sm
	}
	w.sm, w.otherSM = newSM(), newSM()
	w.tenant = fetch.Tenant{Name: "globex", Backend: fetch.BackendBWCLI}
	return w
}

func (w *smWorld) opts() Options {
	return Options{From: w.tenant, OrganizationID: w.org, ProjectID: w.project, MigrationToken: w.migTok, ReadToken: w.readTok}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestRunCopiesVerifiesAndIsIdempotent(t *testing.T) {
	w := newSMWorld(t)
	src := &mapSource{env: maps.Clone(hard)}

	rep, err := Run(ctx(t), src, w.sm, w.opts())
	if err != nil {
		t.Fatalf("first run: %v", err)
	}
	if got, want := rep.Created, hard.Keys(); !slices.Equal(got, want) {
		t.Errorf("first run created %v, want %v", got, want)
	}
	if len(rep.Updated)+len(rep.Unchanged)+len(rep.Extra) != 0 || !rep.Verified {
		t.Errorf("first run: updated %v unchanged %v extra %v verified %v, want only creations, verified",
			rep.Updated, rep.Unchanged, rep.Extra, rep.Verified)
	}
	if got := w.srv.SecretsOf(w.org, w.project); !maps.Equal(got, map[string]string(hard)) {
		t.Errorf("project holds keys %v, want exactly %v with the same values", fetch.Env(got).Keys(), hard.Keys())
	}
	writes := w.srv.Stats().Writes
	if writes != int64(len(hard)) {
		t.Errorf("upstream counted %d writes, want %d", writes, len(hard))
	}

	rep, err = Run(ctx(t), src, w.sm, w.opts())
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if got, want := rep.Unchanged, hard.Keys(); !slices.Equal(got, want) {
		t.Errorf("second run unchanged %v, want %v", got, want)
	}
	if len(rep.Created)+len(rep.Updated) != 0 {
		t.Errorf("second run created %v updated %v, want nothing", rep.Created, rep.Updated)
	}
	if got := w.srv.Stats().Writes; got != writes {
		t.Errorf("second run: upstream writes went from %d to %d, want no write", writes, got)
	}

	// One value changes in the collection: exactly that key is updated.
	src.env["ZIP"] = "008"
	rep, err = Run(ctx(t), src, w.sm, w.opts())
	if err != nil {
		t.Fatalf("third run: %v", err)
	}
	if !slices.Equal(rep.Updated, []string{"ZIP"}) || len(rep.Created) != 0 {
		t.Errorf("third run updated %v created %v, want [ZIP] and nothing", rep.Updated, rep.Created)
	}
	if got := w.srv.Stats().Writes - writes; got != 1 {
		t.Errorf("third run made %d writes, want 1", got)
	}
}

func TestRunRefusesEmptyValues(t *testing.T) {
	w := newSMWorld(t)
	env := maps.Clone(hard)
	env["EMPTY"] = ""
	env["ALSO_EMPTY"] = ""
	src := &mapSource{env: env}

	_, err := Run(ctx(t), src, w.sm, w.opts())
	var ee *EmptyValueError
	if !errors.As(err, &ee) {
		t.Fatalf("Run with empty values: err = %v, want *EmptyValueError", err)
	}
	if want := []string{"ALSO_EMPTY", "EMPTY"}; !slices.Equal(ee.Keys, want) {
		t.Errorf("EmptyValueError.Keys = %v, want %v", ee.Keys, want)
	}
	if got := w.srv.Stats().Writes; got != 0 {
		t.Errorf("a refused migration made %d writes, want 0", got)
	}

	o := w.opts()
	o.SkipEmpty = true
	rep, err := Run(ctx(t), src, w.sm, o)
	if err != nil {
		t.Fatalf("Run with SkipEmpty: %v", err)
	}
	if want := []string{"ALSO_EMPTY", "EMPTY"}; !slices.Equal(rep.SkippedEmpty, want) || !rep.Verified {
		t.Errorf("SkipEmpty: skipped %v verified %v, want %v and verified", rep.SkippedEmpty, rep.Verified, want)
	}
	if rep.Keys != len(env) {
		t.Errorf("report counts %d source keys, want %d", rep.Keys, len(env))
	}
}

func TestRunDetectsChangeBetweenCopyAndVerify(t *testing.T) {
	w := newSMWorld(t)
	src := &mapSource{env: maps.Clone(hard)}
	o := w.opts()
	o.AfterCopy = func(ctx context.Context) error {
		// Someone else changes QUOTES in the project through the API.
		_, _, _, _, err := w.otherSM.Upsert(ctx, w.migTok, w.org, w.project, fetch.Env{"QUOTES": "changed meanwhile"}, false)
		return err
	}
	rep, err := Run(ctx(t), src, w.sm, o)
	var pe *ParityError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want *ParityError", err)
	}
	if !slices.Equal(pe.Different, []string{"QUOTES"}) || len(pe.Missing)+len(pe.Extra) != 0 {
		t.Errorf("parity error: different %v missing %v extra %v, want only [QUOTES] different", pe.Different, pe.Missing, pe.Extra)
	}
	if rep.Verified {
		t.Error("report says verified after a parity failure")
	}
	for _, v := range hard {
		if containsValue(err.Error(), v) {
			t.Errorf("the parity error carries a secret value")
		}
	}
}

func containsValue(s, v string) bool { return len(v) > 3 && strings.Contains(s, v) }

func TestRunExtraKeysAndPrune(t *testing.T) {
	w := newSMWorld(t)
	w.srv.AddSecret(w.org, w.project, "LEFTOVER", "old", "")
	src := &mapSource{env: fetch.Env{"A": "1", "B": "2"}}

	rep, err := Run(ctx(t), src, w.sm, w.opts())
	var pe *ParityError
	if !errors.As(err, &pe) || !slices.Equal(pe.Extra, []string{"LEFTOVER"}) {
		t.Fatalf("without prune: err = %v, want a parity error with extra [LEFTOVER]", err)
	}
	if !slices.Equal(rep.Extra, []string{"LEFTOVER"}) {
		t.Errorf("report extra = %v, want [LEFTOVER]", rep.Extra)
	}
	if _, ok := w.srv.SecretsOf(w.org, w.project)["LEFTOVER"]; !ok {
		t.Error("LEFTOVER was deleted without prune")
	}

	o := w.opts()
	o.Prune = true
	rep, err = Run(ctx(t), src, w.sm, o)
	if err != nil {
		t.Fatalf("with prune: %v", err)
	}
	if !slices.Equal(rep.Deleted, []string{"LEFTOVER"}) || !rep.Verified {
		t.Errorf("with prune: deleted %v verified %v, want [LEFTOVER] and verified", rep.Deleted, rep.Verified)
	}
	if got := w.srv.SecretsOf(w.org, w.project); !maps.Equal(got, map[string]string{"A": "1", "B": "2"}) {
		t.Errorf("after prune the project holds %v, want [A B]", fetch.Env(got).Keys())
	}
}

func TestRunDryRunWritesNothing(t *testing.T) {
	w := newSMWorld(t)
	w.srv.AddSecret(w.org, w.project, "SAME", "v", "")
	w.srv.AddSecret(w.org, w.project, "DIFF", "old", "")
	w.srv.AddSecret(w.org, w.project, "EXTRA", "x", "")
	before := w.srv.SecretsOf(w.org, w.project)
	src := &mapSource{env: fetch.Env{"SAME": "v", "DIFF": "new", "NEW": "n"}}
	o := w.opts()
	o.DryRun = true
	o.ReadToken = "" // not needed for a plan
	rep, err := Run(ctx(t), src, w.sm, o)
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	for _, c := range []struct {
		name      string
		got, want []string
	}{
		{"created", rep.Created, []string{"NEW"}},
		{"updated", rep.Updated, []string{"DIFF"}},
		{"unchanged", rep.Unchanged, []string{"SAME"}},
		{"extra", rep.Extra, []string{"EXTRA"}},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("dry run %s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if got := w.srv.Stats().Writes; got != 0 {
		t.Errorf("dry run made %d writes, want 0", got)
	}
	if after := w.srv.SecretsOf(w.org, w.project); !maps.Equal(before, after) {
		t.Error("dry run changed the project")
	}
}

func TestRunNeedsTokens(t *testing.T) {
	src := &mapSource{env: fetch.Env{"A": "1"}}
	for _, c := range []struct {
		name string
		o    Options
	}{
		{"no migration token", Options{ReadToken: "r"}},
		{"no read token", Options{MigrationToken: "m"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Run(context.Background(), src, nil, c.o); err == nil {
				t.Error("Run succeeded, want an error")
			}
			if src.calls != 0 {
				t.Errorf("the source was read %d times before the tokens were checked", src.calls)
			}
		})
	}
}
