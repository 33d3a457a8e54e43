package scope

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// seeded returns a deterministic random stream (for reproducible tests;
// production uses crypto/rand).
func seeded(seed uint64) io.Reader { return rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}) }

// mint mints a token into s with the given scope and returns it.
func mint(t testing.TB, s *TokenStore, random io.Reader, tenants []string, keys []string, expires time.Time) Token {
	t.Helper()
	tok, id, hash, err := MintToken(random)
	if err != nil {
		t.Fatalf("MintToken: %v", err)
	}
	if err := s.Add(TokenRecord{ID: id, Hash: hash, Tenants: tenants, Keys: keys, Expires: expires, Created: t0, Note: "test"}); err != nil {
		t.Fatalf("Add: %v", err)
	}
	return tok
}

func TestMintTokenFormat(t *testing.T) {
	tok, id, hash, err := MintToken(nil) // crypto/rand
	if err != nil {
		t.Fatalf("MintToken: %v", err)
	}
	s := tok.Reveal()
	if g, w := len(s), TokenLen; g != w {
		t.Errorf("len = %d, want %d", g, w)
	}
	if g, w := TokenLen, 60; g != w {
		t.Errorf("TokenLen = %d, want %d", g, w)
	}
	if !strings.HasPrefix(s, "brk_"+id+"_") {
		t.Errorf("token does not start with brk_<id>_")
	}
	if !ValidTokenID(id) {
		t.Errorf("id %q is not a valid token id", id)
	}
	sum := sha256.Sum256([]byte(s))
	if g, w := hash, hex.EncodeToString(sum[:]); g != w {
		t.Errorf("hash = %s, want sha256 of the token %s", g, w)
	}
	if gotID, ok := parseToken(s); !ok || gotID != id {
		t.Errorf("parseToken(minted) = %q, %v; want %q, true", gotID, ok, id)
	}

	tok2, id2, _, err := MintToken(nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok2.Reveal() == s || id2 == id {
		t.Errorf("two mints gave the same token or id")
	}
}

func TestMintTokenRandomFailure(t *testing.T) {
	_, _, _, err := MintToken(bytes.NewReader(make([]byte, 10)))
	if err == nil {
		t.Fatal("MintToken with a short random source succeeded")
	}
}

func TestTokenRedaction(t *testing.T) {
	tok, _, _, err := MintToken(seeded(1))
	if err != nil {
		t.Fatal(err)
	}
	secret := tok.Reveal()
	var logBuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("minted", "token", tok)
	slog.New(slog.NewTextHandler(&logBuf, nil)).Info("minted", "token", tok)
	jsonOut, err := json.Marshal(map[string]any{"token": tok})
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"Sprint": fmt.Sprint(tok),
		"%v":     fmt.Sprintf("%v", tok),
		"%+v":    fmt.Sprintf("%+v", tok),
		"%#v":    fmt.Sprintf("%#v", tok),
		"%s":     fmt.Sprintf("%s", tok),
		"%q":     fmt.Sprintf("%q", tok),
		"%x":     fmt.Sprintf("%x", tok),
		"struct": fmt.Sprintf("%v", struct{ T Token }{tok}),
		"slog":   logBuf.String(),
		"json":   string(jsonOut),
	}
	for name, out := range outputs {
		if strings.Contains(out, secret) || strings.Contains(out, secret[len(TokenPrefix)+TokenIDLen+1:]) {
			t.Errorf("%s output contains the token", name)
		}
	}
	if g, w := tok.String(), "brk_[REDACTED]"; g != w {
		t.Errorf("String() = %q, want %q", g, w)
	}
}

func TestVerify(t *testing.T) {
	s := NewTokenStore()
	random := seeded(2)
	tok := mint(t, s, random, []string{"acme"}, nil, time.Time{}).Reveal()
	expiring := mint(t, s, random, []string{"acme", "globex"}, []string{"DB_*"}, t0.Add(time.Hour)).Reveal()
	other := NewTokenStore()
	foreign := mint(t, other, random, []string{"acme"}, nil, time.Time{}).Reveal()

	rec, err := s.Verify(tok, t0)
	if err != nil {
		t.Fatalf("Verify(minted) = %v", err)
	}
	if g, w := rec.Tenants, []string{"acme"}; len(g) != 1 || g[0] != w[0] {
		t.Errorf("tenants = %v, want %v", g, w)
	}
	rec.Tenants[0] = "mutated"
	if again, _ := s.Verify(tok, t0); again.Tenants[0] != "acme" {
		t.Errorf("mutating the returned record changed the store")
	}
	if _, err := s.Verify(expiring, t0.Add(time.Hour-time.Nanosecond)); err != nil {
		t.Errorf("Verify just before expiry = %v, want ok", err)
	}

	flip := func(s string, i int) string { // change one character to another of the same alphabet
		b := []byte(s)
		switch {
		case b[i] == 'a':
			b[i] = 'b'
		default:
			b[i] = 'a'
		}
		return string(b)
	}
	secretStart := len(TokenPrefix) + TokenIDLen + 1
	bad := map[string]string{
		"empty":                  "",
		"prefix only":            "brk_",
		"wrong prefix":           "brx_" + tok[4:],
		"upper prefix":           "BRK_" + tok[4:],
		"no prefix":              tok[4:],
		"truncated":              tok[:len(tok)-1],
		"truncated id":           tok[:len(TokenPrefix)+TokenIDLen],
		"padded =":               tok + "=",
		"padded space":           tok + " ",
		"leading space":          " " + tok,
		"newline":                tok + "\n",
		"tampered secret":        flip(tok, secretStart+5),
		"tampered last char":     flip(tok, len(tok)-1),
		"tampered id":            flip(tok, len(TokenPrefix)+3),
		"uppercase id":           tok[:4] + strings.ToUpper(tok[4:16]) + tok[16:],
		"wrong separator":        tok[:16] + "-" + tok[17:],
		"secret not base64":      tok[:secretStart] + "!" + tok[secretStart+1:],
		"standard base64 secret": tok[:secretStart] + "+" + tok[secretStart+1:],
		"expired (at expiry)":    expiring,
		"other store":            foreign,
		"bearer prefix":          "Bearer " + tok,
	}
	for name, in := range bad {
		t.Run(name, func(t *testing.T) {
			now := t0
			if name == "expired (at expiry)" {
				now = t0.Add(time.Hour)
			}
			rec, err := s.Verify(in, now)
			if err != ErrUnauthorized || rec != nil {
				t.Errorf("Verify = %v, %v; want nil, ErrUnauthorized", rec, err)
			}
		})
	}

	// Revocation.
	id, _ := parseToken(tok)
	if !s.Remove(id) {
		t.Fatalf("Remove(%s) = false", id)
	}
	if s.Remove(id) {
		t.Errorf("second Remove(%s) = true", id)
	}
	if _, err := s.Verify(tok, t0); err != ErrUnauthorized {
		t.Errorf("Verify(revoked) = %v, want ErrUnauthorized", err)
	}
	var nilStore *TokenStore
	if _, err := nilStore.Verify(expiring, t0); err != ErrUnauthorized {
		t.Errorf("nil store Verify = %v, want ErrUnauthorized", err)
	}
}

func TestVerifyNonCanonicalSecret(t *testing.T) {
	// 43 base64 characters carry 258 bits: the last character's two low
	// bits are padding and must be zero. A token with them set decodes to
	// the same bytes but is not the minted string: refuse it before
	// hashing.
	tok, _, _, err := MintToken(seeded(3))
	if err != nil {
		t.Fatal(err)
	}
	s := tok.Reveal()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, s[len(s)-1])
	alt := s[:len(s)-1] + string(alphabet[last|1])
	if _, ok := parseToken(alt); ok {
		t.Errorf("parseToken accepted a secret with non-zero padding bits")
	}
}

func TestLooksLikeToken(t *testing.T) {
	tok, id, _, _ := MintToken(seeded(4))
	tests := map[string]bool{
		tok.Reveal():                  true,
		"  " + tok.Reveal() + "\n":    true,
		"brk_":                        true,
		id:                            false,
		"abcdefghijkl":                false,
		"":                            false,
		"note about the deploy token": false,
	}
	for in, want := range tests {
		if got := LooksLikeToken(in); got != want {
			t.Errorf("LooksLikeToken(%d-byte input) = %v, want %v", len(in), got, want)
		}
	}
}

func FuzzVerifyToken(f *testing.F) {
	s := NewTokenStore()
	tok := mint(f, s, seeded(5), []string{"acme"}, nil, time.Time{}).Reveal()
	f.Add(tok)
	f.Add(tok[:len(tok)-1] + "B")
	f.Add("brk_" + strings.Repeat("a", 12) + "_" + strings.Repeat("A", 43))
	f.Add("")
	f.Add("brk_")
	f.Fuzz(func(t *testing.T, in string) {
		rec, err := s.Verify(in, t0)
		if in == tok {
			if err != nil || rec == nil {
				t.Fatalf("the minted token does not verify: %v", err)
			}
			return
		}
		if err != ErrUnauthorized || rec != nil {
			t.Fatalf("Verify(random input) = %v, %v; want nil, ErrUnauthorized", rec, err)
		}
	})
}

func TestParseTokenStoreErrors(t *testing.T) {
	tok, id, hash, _ := MintToken(seeded(6))
	_ = tok
	rec := func(kv ...string) string {
		m := map[string]string{"id": `"` + id + `"`, "sha256": `"` + hash + `"`, "tenants": `["acme"]`, "created": `"2026-03-01T12:00:00Z"`}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		var parts []string
		for k, v := range m {
			parts = append(parts, `"`+k+`":`+v)
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	store := func(recs ...string) string {
		return `{"version":1,"tokens":[` + strings.Join(recs, ",") + `]}`
	}
	tests := []struct {
		name, input, want string
	}{
		{"too large", strings.Repeat(" ", MaxTokenStoreSize+1), "token store is larger than 4194304 bytes"},
		{"version missing", `{"tokens":[]}`, "version: required …"},
		{"version 2", `{"version":2,"tokens":[],"new":1}`, "version: unsupported version 2 (this broker reads version 1)"},
		{"tokens missing", `{"version":1}`, "tokens: required"},
		{"unknown field", `{"version":1,"tokens":[],"x":1}`, `top level: unknown field "x"`},
		{"unknown record field", store(rec("secret", `"x"`)), `tokens[0]: unknown field "secret"`},
		{"bad id", store(rec("id", `"ABC"`)), "tokens[0].id: not a token id …"},
		{"token as id", store(rec("id", `"`+tok.Reveal()+`"`)), "tokens[0].id: not a token id …"},
		{"bad hash", store(rec("sha256", `"`+strings.ToUpper(hash)+`"`)), "tokens[0].sha256: not a lowercase hex SHA-256"},
		{"no tenants", store(rec("tenants", `[]`)), "tokens[0].tenants: at least one tenant is required …"},
		{"wildcard tenant", store(rec("tenants", `["acme","*"]`)), "tokens[0].tenants[1]: tenant name must match ^[a-z0-9][a-z0-9_-]{0,62}$ (tokens name tenants explicitly; there is no wildcard)"},
		{"duplicate tenant", store(rec("tenants", `["acme","acme"]`)), "tokens[0].tenants[1]: duplicate of tenants[0]"},
		{"bad glob", store(rec("keys", `["DB_[*"]`)), "tokens[0].keys[0]: not a valid key glob …"},
		{"note with token", store(rec("note", `"for ci: `+tok.Reveal()+`"`)), `tokens[0].note: contains "brk_": a caller token must never be stored in a note`},
		{"note with newline", store(rec("note", `"a\nb"`)), "tokens[0].note: must be one line of printable text"},
		{"created missing", store(rec("created", "")), "tokens[0].created: required"},
		{"created invalid", store(rec("created", `"yesterday"`)), `tokens[0].created: invalid time "yesterday" (want RFC 3339)`},
		{"expires before created", store(rec("expires", `"2026-03-01T11:00:00Z"`)), "tokens[0].expires: must be after created"},
		{"duplicate id", store(rec(), rec("sha256", `"`+strings.Repeat("0", 64)+`"`)), "tokens[1].id: duplicate of tokens[0].id"},
		{"duplicate hash", store(rec(), rec("id", `"aaaaaaaaaaaa"`)), "tokens[1].sha256: duplicate of tokens[0].sha256"},
		{"duplicate key", `{"version":1,"tokens":[],"tokens":[]}`, "tokens: duplicate key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseTokenStore(strings.NewReader(tt.input))
			if err == nil {
				t.Fatalf("ParseTokenStore succeeded (%d tokens), want error %q", len(s.Tokens), tt.want)
			}
			got := err.Error()
			if prefix, ok := strings.CutSuffix(tt.want, "…"); ok {
				if !strings.HasPrefix(got, prefix) {
					t.Errorf("error = %q, want prefix %q", got, prefix)
				}
			} else if got != tt.want {
				t.Errorf("error = %q, want %q", got, tt.want)
			}
			if strings.Contains(got, tok.Reveal()) {
				t.Errorf("error contains the token")
			}
		})
	}

	// A valid one, with keys, note and a non-UTC expiry.
	in := store(rec("keys", `["DB_*","API_KEY"]`, "note", `"ci deploy"`, "expires", `"2026-03-02T14:00:00+02:00"`))
	s, err := ParseTokenStore(strings.NewReader(in))
	if err != nil {
		t.Fatalf("ParseTokenStore(valid) = %v", err)
	}
	if g, w := s.Tokens[0].Expires, time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC); !g.Equal(w) || g.Location() != time.UTC {
		t.Errorf("expires = %v, want %v in UTC", g, w)
	}
}

func TestTokenStoreAddAndMarshal(t *testing.T) {
	s := NewTokenStore()
	random := seeded(7)
	tok := mint(t, s, random, []string{"acme", "globex"}, []string{"DB_*"}, t0.Add(24*time.Hour))
	mint(t, s, random, []string{"initech"}, nil, time.Time{})
	_, id, hash, _ := MintToken(random)

	addErrs := []struct {
		name string
		rec  TokenRecord
		want string
	}{
		{"duplicate id", TokenRecord{ID: s.Tokens[0].ID, Hash: hash, Tenants: []string{"a"}, Created: t0}, "add token: id " + s.Tokens[0].ID + " already exists"},
		{"duplicate hash", TokenRecord{ID: id, Hash: s.Tokens[0].Hash, Tenants: []string{"a"}, Created: t0}, "add token: a token with the same hash already exists"},
		{"wildcard tenant", TokenRecord{ID: id, Hash: hash, Tenants: []string{"*"}, Created: t0}, "add token: tenants[0]: tenant name must match …"},
		{"no tenants", TokenRecord{ID: id, Hash: hash, Created: t0}, "add token: tenants: at least one tenant is required …"},
		{"bad glob", TokenRecord{ID: id, Hash: hash, Tenants: []string{"a"}, Keys: []string{"a/b"}, Created: t0}, "add token: keys[0]: not a valid key glob …"},
		{"token as note", TokenRecord{ID: id, Hash: hash, Tenants: []string{"a"}, Note: tok.Reveal(), Created: t0}, "add token: note: contains …"},
		{"no created", TokenRecord{ID: id, Hash: hash, Tenants: []string{"a"}}, "add token: created: required"},
	}
	for _, tt := range addErrs {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Add(tt.rec)
			if err == nil {
				t.Fatalf("Add succeeded, want %q", tt.want)
			}
			if prefix, ok := strings.CutSuffix(tt.want, "…"); ok {
				if !strings.HasPrefix(err.Error(), prefix) {
					t.Errorf("error = %q, want prefix %q", err, prefix)
				}
			} else if err.Error() != tt.want {
				t.Errorf("error = %q, want %q", err, tt.want)
			}
		})
	}
	if g, w := len(s.Tokens), 2; g != w {
		t.Fatalf("after refused Adds: %d tokens, want %d", g, w)
	}

	out, err := s.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	if bytes.Contains(out, []byte(tok.Reveal())) {
		t.Fatalf("marshaled store contains a token")
	}
	s2, err := ParseTokenStore(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("ParseTokenStore(Marshal): %v\n%s", err, out)
	}
	if _, err := s2.Verify(tok.Reveal(), t0); err != nil {
		t.Errorf("token does not verify after a round trip: %v", err)
	}
	out2, _ := s2.Marshal()
	if !bytes.Equal(out, out2) {
		t.Errorf("Marshal not stable:\n%s\n---\n%s", out, out2)
	}
	if rec := s2.Lookup(s.Tokens[1].ID); rec == nil || rec.Tenants[0] != "initech" {
		t.Errorf("Lookup(%s) = %+v", s.Tokens[1].ID, rec)
	}
	if rec := s2.Lookup("nonexistent00"); rec != nil {
		t.Errorf("Lookup(unknown) = %+v, want nil", rec)
	}

	empty, err := (&TokenStore{Version: 1}).Marshal()
	if err != nil || !bytes.Contains(empty, []byte(`"tokens": []`)) {
		t.Errorf("empty store Marshal = %s, %v", empty, err)
	}
}

func FuzzParseTokenStore(f *testing.F) {
	s := NewTokenStore()
	mint(f, s, seeded(8), []string{"acme"}, []string{"DB_*", "X?"}, t0.Add(time.Hour))
	good, err := s.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"version":1,"tokens":[]}`))
	f.Add([]byte(`{"version":1,"tokens":[{"id":"aaaaaaaaaaaa"}]}`))
	f.Add([]byte(`{"version":1,"tokens":[{"created":"0000-01-01T00:00:00+01:00"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseTokenStore(bytes.NewReader(data))
		if err != nil {
			if s != nil {
				t.Fatalf("ParseTokenStore returned a store and an error")
			}
			return
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatalf("Marshal of an accepted store: %v", err)
		}
		s2, err := ParseTokenStore(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("ParseTokenStore(Marshal(s)): %v", err)
		}
		out2, err := s2.Marshal()
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the store (err %v)", err)
		}
	})
}
