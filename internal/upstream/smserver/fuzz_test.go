package smserver

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// FuzzVerifyJWT: verifyJWT never panics, and it accepts nothing but the one
// token this server signed (the fuzzer cannot forge an HMAC).
func FuzzVerifyJWT(f *testing.F) {
	s := New(Options{})
	now := time.Now()
	valid := s.signJWT(claims{Exp: now.Add(time.Hour).Unix(), Nbf: now.Unix(), Sub: "a", Organization: "o", Scope: []string{"api.secrets"}})
	f.Add(valid)
	f.Add("")
	f.Add("a.b.c")
	f.Add(strings.Replace(valid, ".", "..", 1))
	f.Add(valid + "=")
	f.Fuzz(func(t *testing.T, tok string) {
		_, err := s.verifyJWT(tok, now)
		if err == nil && tok != valid {
			t.Errorf("verifyJWT accepted a token it did not sign")
		}
	})
}

// FuzzTamperMACs: tamperMACs never panics and keeps the body's length.
func FuzzTamperMACs(f *testing.F) {
	f.Add([]byte(`{"a":"2.AAAAAAAAAAAAAAAAAAAAAA==|AAAAAAAAAAAAAAAAAAAAAA==|AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`))
	f.Add([]byte(`2.a|b|c`))
	f.Add([]byte(`2.=|=|=`))
	f.Fuzz(func(t *testing.T, body []byte) {
		in := bytes.Clone(body)
		out := tamperMACs(body)
		if len(out) != len(in) {
			t.Errorf("length %d, want %d", len(out), len(in))
		}
		if !bytes.Equal(body, in) {
			t.Errorf("tamperMACs modified its input")
		}
	})
}
