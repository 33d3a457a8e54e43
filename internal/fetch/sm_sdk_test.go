//go:build cgo && (linux || darwin) && (amd64 || arm64)

package fetch

// Tests that need the real SDK linked in. The backend tests against the
// in-repo upstream run for both clients in sm_native_test.go (table over
// smKinds); sm_diff_test.go compares the two clients.

import "testing"

func TestSMClientDefaultWithSDK(t *testing.T) {
	if !SMSupported() {
		t.Fatalf("SMSupported() = false in a cgo build")
	}
	if got := SMClientDefault(); got != SMClientSDK {
		t.Errorf("SMClientDefault() = %q, want %q", got, SMClientSDK)
	}
	if got := smKinds(); len(got) != 2 {
		t.Errorf("smKinds() = %v, want both clients", got)
	}
}
