package depcheck

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/hostd/broker/"

// deps returns the transitive imports of pkg (module-relative), as go list
// sees them for the current build configuration.
func deps(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", mod+pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", pkg, err, out)
	}
	set := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		set[l] = true
	}
	return set
}

// TestImportGraph enforces the layering of STYLE.md section 3: lower
// packages never import higher ones, so the security-relevant pieces can be
// read and tested on their own.
func TestImportGraph(t *testing.T) {
	rules := []struct {
		pkg string
		bad []string
		why string
	}{
		{"internal/fetch", []string{"internal/scope", "internal/server", "internal/fallback/bwcli", "internal/state"},
			"fetch is below authorization and the server: it must not know about them"},
		{"internal/fallback/bwcli", []string{"internal/scope", "internal/server", "internal/state"},
			"the fallback depends on fetch only"},
		{"internal/render", []string{"internal/scope", "internal/server", "net/http", "os/exec"},
			"rendering is pure"},
		{"internal/bwcrypto", []string{"internal/fetch", "net/http"}, "crypto is a leaf"},
		{"internal/server", []string{"internal/fallback/bwcli", "internal/upstream/smserver", "internal/upstream/vwserver", "internal/demo"},
			"the server does not know which backends exist, nor the test upstreams"},
		{"internal/upstream/smserver", []string{"github.com/bitwarden/sdk-go", "internal/fetch"},
			"the test upstream must not share code with the client it tests"},
		{"internal/upstream/vwserver", []string{"internal/fetch", "internal/fallback/bwcli"},
			"the test upstream must not share code with the client it tests"},
	}
	for _, r := range rules {
		got := deps(t, r.pkg)
		for _, b := range r.bad {
			full := b
			if strings.HasPrefix(b, "internal/") {
				full = mod + b
			}
			if got[full] {
				t.Errorf("%s imports %s: %s", r.pkg, b, r.why)
			}
		}
	}
}

// TestThirdPartyDeps keeps the broker binary's third-party modules to the
// ones the README names and justifies.
func TestThirdPartyDeps(t *testing.T) {
	allowed := []string{
		"github.com/bitwarden/sdk-go",        // Secrets Manager (cgo)
		"github.com/joho/godotenv",           // reading env files
		"github.com/hashicorp/golang-lru/v2", // bounded caches
		"golang.org/x/time/rate",             // upstream limiter
		"golang.org/x/sync/singleflight",     // collapsing concurrent misses
		"golang.org/x/sys/unix",              // flock, umask, prctl, peer credentials
		"github.com/prometheus/",             // /metrics (client_golang and its parts)
		"github.com/beorn7/perks",            // client_golang
		"github.com/cespare/xxhash",          // client_golang
		"github.com/munnerz/goautoneg",       // client_golang
		"google.golang.org/protobuf",         // client_golang
		"go.yaml.in/yaml",                    // prometheus/common
	}
	for p := range deps(t, "cmd/broker") {
		if !strings.Contains(strings.SplitN(p, "/", 2)[0], ".") || strings.HasPrefix(p, mod) {
			continue
		}
		ok := false
		for _, a := range allowed {
			if strings.HasPrefix(p, a) {
				ok = true
				break
			}
		}
		if !ok {
			t.Errorf("cmd/broker depends on %s, which the README does not justify", p)
		}
	}
}
