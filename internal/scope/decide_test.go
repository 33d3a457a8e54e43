package scope

import (
	"errors"
	"strings"
	"testing"
)

func TestDecide(t *testing.T) {
	p, err := parse(edit())
	if err != nil {
		t.Fatal(err)
	}
	rec := &TokenRecord{Tenants: []string{"acme", "removed"}}
	tests := []struct {
		name       string
		rec        *TokenRecord
		policy     *Policy
		tenant     string
		wantAllow  bool
		wantReason string
	}{
		{"in scope", rec, p, "acme", true, ReasonAllowed},
		{"out of scope, exists", rec, p, "globex", false, ReasonNotInScope},
		{"unknown tenant", rec, p, "nosuch", false, ReasonNotInScope},
		{"in scope, removed from policy", rec, p, "removed", false, ReasonNotInPolicy},
		{"wildcard is not a tenant", rec, p, "*", false, ReasonBadTenantName},
		{"empty tenant", rec, p, "", false, ReasonBadTenantName},
		{"case differs", rec, p, "ACME", false, ReasonBadTenantName},
		{"nil record", nil, p, "acme", false, ReasonNoToken},
		{"nil policy", rec, nil, "acme", false, ReasonNoPolicy},
		{"token scoped to *", &TokenRecord{Tenants: []string{"*"}}, p, "acme", false, ReasonNotInScope},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.rec, tt.policy, tt.tenant)
			if d.Allow != tt.wantAllow || d.Reason != tt.wantReason {
				t.Errorf("Decide(%q) = %+v, want {Allow:%v Reason:%q}", tt.tenant, d, tt.wantAllow, tt.wantReason)
			}
			err := d.Err()
			if tt.wantAllow != (err == nil) || (err != nil && !errors.Is(err, ErrDenied)) {
				t.Errorf("Err() = %v, want nil iff allowed, else ErrDenied", err)
			}
		})
	}

	// No oracle: what the caller sees (Allow and the error class) is the
	// same for a tenant outside the scope and for one that does not exist.
	out, unknown := Decide(rec, p, "globex"), Decide(rec, p, "nosuch")
	if out.Allow != unknown.Allow || errors.Is(out.Err(), ErrDenied) != errors.Is(unknown.Err(), ErrDenied) {
		t.Errorf("out-of-scope %+v and unknown %+v differ to the caller", out, unknown)
	}
}

func TestAllowsKey(t *testing.T) {
	tests := []struct {
		keys []string
		key  string
		want bool
	}{
		{nil, "ANYTHING", true},
		{[]string{}, "ANYTHING", true},
		{[]string{"DB_*"}, "DB_PASSWORD", true},
		{[]string{"DB_*"}, "DB_", true},
		{[]string{"DB_*"}, "API_KEY", false},
		{[]string{"DB_*"}, "db_password", false},
		{[]string{"API_KEY"}, "API_KEY", true},
		{[]string{"API_KEY"}, "API_KEY2", false},
		{[]string{"KEY?"}, "KEY1", true},
		{[]string{"KEY?"}, "KEY12", false},
		{[]string{"KEY_[AB]"}, "KEY_B", true},
		{[]string{"KEY_[^AB]"}, "KEY_B", false},
		{[]string{"KEY_[^AB]"}, "KEY_C", true},
		{[]string{"KEY_[0-9]"}, "KEY_7", true},
		{[]string{"KEY_[0-9]"}, "KEY_X", false},
		{[]string{"X", "DB_*"}, "DB_HOST", true},
		{[]string{"*"}, "ANY", true},
	}
	for _, tt := range tests {
		rec := &TokenRecord{Keys: tt.keys}
		if got := rec.AllowsKey(tt.key); got != tt.want {
			t.Errorf("AllowsKey(%v, %q) = %v, want %v", tt.keys, tt.key, got, tt.want)
		}
	}
}

func TestValidKeyGlob(t *testing.T) {
	tests := map[string]bool{
		"DB_*": true, "*": true, "KEY?": true, "A": true, "[AB]_X": true, "[^AB]": true, "[a-zA-Z_]*": true,
		"": false, "a/b": false, `A\*`: false, "[": false, "[]": false, "[^]": false, "[AB": false, "[z-a]": false,
		"[a-]": false, "A-B": false, "A.B": false, "A B": false, "$X": false, "ü": false,
		strings.Repeat("A", MaxEnvNameLen): true, strings.Repeat("A", MaxEnvNameLen+1): false,
	}
	for in, want := range tests {
		if got := ValidKeyGlob(in); got != want {
			t.Errorf("ValidKeyGlob(%q) = %v, want %v", in, got, want)
		}
	}
}
