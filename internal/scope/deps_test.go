package scope

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the package pure: standard library only (plus the stdlib-only
// internal/envkey leaf), and none of the
// packages that would let it do network or process I/O.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	bad := map[string]string{
		"net/http": "scope does no network I/O",
		"net":      "scope does no network I/O",
		"os/exec":  "scope runs no processes",
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, std, _ := strings.Cut(line, " ")
		if why, ok := bad[pkg]; ok {
			t.Errorf("imports %s: %s", pkg, why)
		}
		if std != "true" && pkg != "github.com/hostd/broker/internal/scope" && pkg != "github.com/hostd/broker/internal/envkey" {
			t.Errorf("imports non-standard package %s: scope imports the standard library (and the envkey leaf) only", pkg)
		}
	}
}
