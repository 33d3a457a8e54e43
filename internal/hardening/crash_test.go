package hardening

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKillDuringWrite kills `broker fetch --out` with SIGKILL at many points
// of its run (during the request, as soon as its temporary file appears,
// half-way through writing it, once it is complete but not yet renamed, and
// at random times) and checks after every kill that the target file is whole:
// exactly the previous content or exactly one complete env, mode 0600, never
// partial, never empty. The env is large (megabytes), so the write takes
// measurable time. The run alternates two tenants, so every write replaces
// a different content.
func TestKillDuringWrite(t *testing.T) {
	iterations := 40
	if testing.Short() {
		iterations = 12
	}
	w := newSMWorld(t)
	bigA := w.addTenant(t, "big-a", 250, 20000) // about 5 MB of dotenv each
	bigB := w.addTenant(t, "big-b", 250, 20000)
	w.write(t, "1h")
	tok := mint(t, w.site, "big-a", "big-b")
	b := startBroker(t, w.site, nil, nil)
	bodies := map[string][]byte{"big-a": bigA.dotenv(t), "big-b": bigB.dotenv(t)}
	for name, want := range bodies {
		if r := b.fetch(t, tok, name); r.code != 0 || !bytes.Equal(r.stdout, want) {
			t.Fatalf("reference fetch of %s: exit %d; stderr %s", name, r.code, r.stderr)
		}
	}

	dir := t.TempDir()
	out := filepath.Join(dir, "app.env")
	if err := os.WriteFile(out, []byte(previousEnv), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func(tenant string) *exec.Cmd {
		cmd := exec.Command(brokerBin, "fetch", "--socket", b.site.sock, "--tenant", tenant, "--out", out)
		cmd.Env = append(baseEnv(), "BROKER_TOKEN="+tok)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { leaks.capture(t.Name()+": killed fetch stderr", stderr.Bytes()) })
		return cmd
	}
	// How long one whole run takes (measured, not asserted).
	t0 := time.Now()
	if err := start("big-a").Wait(); err != nil {
		t.Fatalf("uninterrupted fetch --out: %v", err)
	}
	full := time.Since(t0)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, bodies["big-a"]) {
		t.Fatalf("uninterrupted fetch --out wrote the wrong content")
	}
	t.Logf("one fetch --out of %d bytes takes %v", len(bodies["big-a"]), full)

	valid := func(got []byte) string {
		switch {
		case string(got) == previousEnv:
			return "previous"
		case bytes.Equal(got, bodies["big-a"]):
			return "big-a"
		case bytes.Equal(got, bodies["big-b"]):
			return "big-b"
		}
		return ""
	}
	// tempState reports the temporary file's size, or -1 if there is none.
	tempState := func() int64 {
		es, _ := os.ReadDir(dir)
		for _, e := range es {
			if strings.HasPrefix(e.Name(), ".app.env.tmp-") {
				if fi, err := e.Info(); err == nil {
					return fi.Size()
				}
			}
		}
		return -1
	}

	phases := []string{"random", "temp-appears", "temp-half", "temp-complete"}
	seen := map[string]int{}
	leftovers := 0
	for i := range iterations {
		tenant := []string{"big-a", "big-b"}[i%2]
		size := int64(len(bodies[tenant]))
		target := phases[i%len(phases)]
		cmd := start(tenant)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		delay := time.Duration(rand.Int64N(int64(full) * 6 / 5))
		deadline := time.Now().Add(time.Minute)
		observed := "exited-first"
	poll:
		for {
			select {
			case <-done:
				break poll
			default:
			}
			ts := tempState()
			hit := false
			switch target {
			case "random":
				hit = time.Since(t0) >= delay
			case "temp-appears":
				hit = ts >= 0
			case "temp-half":
				hit = ts >= size/2
			case "temp-complete":
				hit = ts == size
			}
			if hit || time.Now().After(deadline) {
				cmd.Process.Signal(syscall.SIGKILL)
				<-done
				switch {
				case ts < 0:
					observed = "no-temp-file"
				case ts == 0:
					observed = "temp-empty"
				case ts < size:
					observed = "temp-partial"
				default:
					observed = "temp-complete"
				}
				break poll
			}
			if target == "random" && ts < 0 {
				time.Sleep(200 * time.Microsecond)
			}
		}
		if target == "random" {
			t0 = time.Now() // the next random delay counts from the next start
		}
		seen[observed]++
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("run %d (%s, killed at %s): the target is gone: %v", i, tenant, observed, err)
		}
		if v := valid(got); v == "" {
			t.Fatalf("run %d (%s, killed at %s): the target holds %d bytes that are neither the previous file nor a whole env", i, tenant, observed, len(got))
		}
		if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
			t.Fatalf("run %d: target mode %v, want 0600", i, fi.Mode().Perm())
		}
		// A killed writer cannot remove its temporary file; it must at
		// least be owner-only. Remove it for the next run.
		es, _ := os.ReadDir(dir)
		for _, e := range es {
			if e.Name() == "app.env" {
				continue
			}
			fi, _ := e.Info()
			if fi != nil && fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("leftover temporary file %s has mode %v: readable by others", e.Name(), fi.Mode().Perm())
			}
			leftovers++
			os.Remove(filepath.Join(dir, e.Name()))
		}
		t0 = time.Now()
	}
	t.Logf("%d kills; state at kill: %v; %d temporary files left behind by killed writers (owner-only, removed by the test)",
		iterations, fmt.Sprint(seen), leftovers)
	if seen["temp-partial"]+seen["temp-complete"]+seen["temp-empty"] == 0 {
		t.Logf("note: no kill landed while the temporary file existed on this machine")
	}
}
