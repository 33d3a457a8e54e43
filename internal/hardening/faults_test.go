package hardening

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hostd/broker/internal/upstream/smserver"
)

// Exit codes of the CLI (DESIGN 4).
const (
	exitOK          = 0
	exitFailure     = 1
	exitDenied      = 3
	exitUnavailable = 4
)

// faultCase is one row of the fault matrix: a fault, what `broker fetch`
// must answer, and whether the tenant must work again once it is cleared.
type faultCase struct {
	name    string
	inject  func(w *smWorld)
	timeout string // --timeout of the fetch ("" = default)
	code    int
	say     string // part of the one error line
}

// smFaults are the Secrets Manager faults. Persistent faults (Times: 100)
// outlast the backend's retries; the single ones show a retry succeeding.
var smFaults = []faultCase{
	{name: "slower-than-deadline", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", Delay: 6 * time.Second})
	}, timeout: "2s", code: exitUnavailable, say: "did not answer"},
	{name: "reset", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", Reset: true, Times: 100})
	}, code: exitUnavailable, say: "unreachable"},
	{name: "truncated-body", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", Truncate: true, Times: 100})
	}, code: exitUnavailable, say: "unreachable"},
	{name: "invalid-json", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", BadJSON: true, Times: 100})
	}, code: exitUnavailable, say: "could not read"},
	{name: "tampered-mac", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", TamperMAC: true, Times: 100})
	}, code: exitUnavailable, say: "integrity check"},
	{name: "tampered-login-payload", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "identity", TamperMAC: true, Times: 100})
	}, code: exitUnavailable, say: "integrity check"},
	{name: "http-502", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", Status: 502, Times: 100})
	}, code: exitUnavailable, say: "server error"},
	{name: "http-429", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", Status: 429, Times: 100})
	}, code: exitUnavailable, say: "rate limiting"},
	{name: "identity-503", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "identity", Status: 503, Times: 100})
	}, code: exitUnavailable, say: "Secrets Manager"},
	{name: "upstream-down", inject: func(w *smWorld) {
		w.srv.Stop()
	}, code: exitUnavailable, say: "unreachable"},
	// Transient faults: the backend retries and the fetch succeeds.
	{name: "one-429-with-retry-after", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", Status: 429, RetryAfter: time.Second})
	}, code: exitOK},
	{name: "one-reset", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", Reset: true})
	}, code: exitOK},
	{name: "one-truncated-body", inject: func(w *smWorld) {
		w.srv.InjectFault(smserver.Fault{Route: "api", Truncate: true})
	}, code: exitOK},
}

const previousEnv = "PREVIOUS=\"kept\"\n"

// TestFaultMatrixSM drives `broker fetch --out` through a running `broker
// serve` while the Secrets Manager upstream misbehaves. Every fault must
// give one clean error line and the right exit code, leave the previous
// --out file exactly as it was (no partial env, no temporary file), never
// panic, and leave no goroutine or open file behind in the broker.
func TestFaultMatrixSM(t *testing.T) {
	w := newSMWorld(t)
	healthy := w.addTenant(t, "healthy", 5, 0)
	for i := range 3 {
		w.addTenant(t, fmt.Sprintf("warm-%d", i), 2, 0)
	}
	for _, c := range smFaults {
		w.addTenant(t, "f-"+c.name, 3, 0)
	}
	revoked := w.addTenant(t, "revoked", 3, 0)
	var names []string
	for n := range w.tenants {
		if n != "_ops" {
			names = append(names, n)
		}
	}
	w.write(t, "1s") // a short TTL, so that the revoked token is asked again soon
	tok := mint(t, w.site, names...)
	b := startBroker(t, w.site, nil, nil)

	r := b.fetch(t, tok, "healthy")
	if r.code != 0 || !bytes.Equal(r.stdout, healthy.dotenv(t)) {
		t.Fatalf("healthy fetch: exit %d, stdout matches: %v; stderr %s", r.code, bytes.Equal(r.stdout, healthy.dotenv(t)), r.stderr)
	}
	// Each live SDK client owns a few descriptors (its runtime's epoll and
	// eventfd, a keep-alive connection); measure that cost on three more
	// tenants, so that descriptors held by live pooled clients are told
	// apart from leaked ones.
	m0 := b.metrics()
	for i := range 3 {
		if r := b.fetch(t, tok, fmt.Sprintf("warm-%d", i)); r.code != 0 {
			t.Fatalf("warm-up fetch: exit %d; stderr %s", r.code, r.stderr)
		}
	}
	base := b.metrics()
	perClient := (base["process_open_fds"] - m0["process_open_fds"]) / (base["broker_sm_live_clients"] - m0["broker_sm_live_clients"])
	baseG, baseFD, baseLive := base["go_goroutines"], base["process_open_fds"], base["broker_sm_live_clients"]
	t.Logf("broker baseline after warm-up: %v goroutines, %v open files %v, %v live SDK clients (%.1f descriptors each)",
		baseG, baseFD, fdKinds(b.pid()), baseLive, perClient)

	addr := w.srv.Addr()
	for _, c := range smFaults {
		t.Run(c.name, func(t *testing.T) {
			tn := w.tenants["f-"+c.name]
			dir := t.TempDir()
			out := filepath.Join(dir, "app.env")
			if err := os.WriteFile(out, []byte(previousEnv), 0o600); err != nil {
				t.Fatal(err)
			}
			c.inject(w)
			args := []string{"--out", out}
			if c.timeout != "" {
				args = append(args, "--timeout", c.timeout)
			}
			r := b.fetch(t, tok, tn.name, args...)
			w.srv.ClearFaults()
			if c.name == "upstream-down" {
				if err := w.srv.StartAt(addr); err != nil {
					t.Fatalf("restart upstream: %v", err)
				}
			}
			want := []byte(previousEnv)
			if c.code == exitOK {
				if r.code != 0 {
					t.Fatalf("exit %d, want 0 after a transient fault; stderr %s", r.code, r.stderr)
				}
				checkNoCrash(t, "broker fetch", r.stderr)
				want = tn.dotenv(t)
			} else {
				checkCleanFailure(t, r, c.code, c.say)
			}
			got, err := os.ReadFile(out)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("--out holds %d bytes (%v), want %d: the previous file was not kept whole", len(got), err, len(want))
			}
			if names := dirNames(t, dir); len(names) != 1 {
				t.Errorf("--out dir holds %v, want only app.env", names)
			}
			if c.code == exitOK {
				return
			}
			// Once the fault is gone, the same tenant works (nothing broken
			// or poisoned in the cache). The slow answer may still be in
			// flight: the fetch joins it.
			r = b.fetch(t, tok, tn.name, "--out", out)
			if r.code != 0 {
				t.Fatalf("after clearing the fault: exit %d; stderr %s", r.code, r.stderr)
			}
			if got, _ := os.ReadFile(out); !bytes.Equal(got, tn.dotenv(t)) {
				t.Errorf("after clearing the fault --out does not hold the tenant's env")
			}
		})
	}

	// A refused credential is not "retry later": exit 1.
	t.Run("revoked-token-mid-run", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "app.env")
		if r := b.fetch(t, tok, revoked.name, "--out", out); r.code != 0 {
			t.Fatalf("first fetch: exit %d; stderr %s", r.code, r.stderr)
		}
		w.srv.RevokeAccessToken(revoked.tokenID)
		time.Sleep(1500 * time.Millisecond) // let the 1s cache entry expire
		r := b.fetch(t, tok, revoked.name, "--out", out)
		checkCleanFailure(t, r, exitFailure, "access token was refused")
		if got, _ := os.ReadFile(out); !bytes.Equal(got, revoked.dotenv(t)) {
			t.Errorf("--out no longer holds the last good env after a refused fetch")
		}
		if names := dirNames(t, dir); len(names) != 1 {
			t.Errorf("--out dir holds %v, want only app.env", names)
		}
		// stdout mode: nothing at all is printed on failure.
		r = b.fetch(t, tok, revoked.name)
		checkCleanFailure(t, r, exitFailure, "access token was refused")
	})

	// Another tenant is unaffected by all of the above.
	if r := b.fetch(t, tok, "healthy"); r.code != 0 || !bytes.Equal(r.stdout, healthy.dotenv(t)) {
		t.Errorf("healthy tenant after the matrix: exit %d; stderr %s", r.code, r.stderr)
	}
	live := b.metrics()["broker_sm_live_clients"]
	allowFD := baseFD + perClient*(live-baseLive)
	g, fd := b.settle(baseG, allowFD, 0, 20*time.Second)
	t.Logf("broker after %d faults: %v goroutines (baseline %v), %v open files %v (baseline %v + %.0f for %v more live SDK clients)",
		len(smFaults)+1, g, baseG, fd, fdKinds(b.pid()), baseFD, allowFD-baseFD, live-baseLive)
	if g > baseG {
		t.Errorf("goroutines %v, baseline %v: a goroutine was left behind", g, baseG)
	}
	if fd > allowFD {
		t.Errorf("open files %v, want at most %v (baseline and the live clients' own): a descriptor was left behind", fd, allowFD)
	}
}
