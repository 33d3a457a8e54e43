package render

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hostd/broker/internal/fetch"
	"github.com/joho/godotenv"
)

// wantKeyError returns the *KeyError Render(f, env) must return: the first
// key in byte order that ok rejects, or nil when there is none.
func wantKeyError(f Format, env map[string]string, ok func(k, v string) error) *KeyError {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := ok(k, env[k]); err != nil {
			return &KeyError{Format: f, Key: k, Err: err}
		}
	}
	return nil
}

// checkRenderError fails t unless err is exactly want (both may be nil).
func checkRenderError(t *testing.T, err error, want *KeyError) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("Render: unexpected error %v", err)
		}
		return
	}
	var ke *KeyError
	if !errors.As(err, &ke) || ke.Format != want.Format || ke.Key != want.Key || ke.Err != want.Err {
		t.Fatalf("Render: got error %v, want %v", err, want)
	}
	if err.Error() != want.Error() {
		t.Fatalf("Render: got error message %q, want %q", err, want)
	}
}

// FuzzDotenvRoundTrip checks that godotenv.Unmarshal gives back exactly the
// rendered map. Keys A and HOME are present so that a `$A` or `$HOME` that
// escaped the escaping would expand; key is fuzzed and may be invalid, which
// must give ErrInvalidKey naming it and nothing else.
func FuzzDotenvRoundTrip(f *testing.F) {
	for _, tc := range hardValues {
		f.Add("K", tc.v, "$A${HOME}")
	}
	f.Fuzz(func(t *testing.T, key, v1, v2 string) {
		env := map[string]string{"A": v1, "HOME": v2, key: v2 + v1}
		out, err := Render(Dotenv, env)
		checkRenderError(t, err, wantKeyError(Dotenv, env, func(k, _ string) error {
			if !fetch.ValidKey(k) {
				return ErrInvalidKey
			}
			return nil
		}))
		if err != nil {
			delete(env, key)
			if out, err = Render(Dotenv, env); err != nil {
				t.Fatalf("Render without the invalid key: %v", err)
			}
		}
		got, err := godotenv.Unmarshal(string(out))
		if err != nil {
			t.Fatalf("godotenv.Unmarshal: %v", err)
		}
		if d := diffKeys(got, env); d != nil {
			t.Fatalf("godotenv.Unmarshal gives back different values for keys %v", d)
		}
	})
}

// FuzzShellRoundTrip checks that sourcing the output in the real /bin/sh
// gives exactly the values, one sh process per input; a NUL byte must give
// ErrNUL naming the first such key and nothing else.
func FuzzShellRoundTrip(f *testing.F) {
	for _, tc := range hardValues {
		f.Add(tc.v, "'")
	}
	f.Fuzz(func(t *testing.T, v1, v2 string) {
		env := map[string]string{"A": v1, "B": v2}
		out, err := Render(Shell, env)
		checkRenderError(t, err, wantKeyError(Shell, env, func(_, v string) error {
			if strings.IndexByte(v, 0) >= 0 {
				return ErrNUL
			}
			return nil
		}))
		if err != nil {
			return
		}
		got := sourceShell(t, out, []string{"A", "B"})
		if d := diffKeys(got, env); d != nil {
			t.Fatalf("/bin/sh gives back different values for keys %v", d)
		}
	})
}

// FuzzJSONRoundTrip checks that the output is byte for byte what
// encoding/json writes and that it decodes back to the same map; an invalid
// key or invalid UTF-8 must give the matching error for the first such key.
func FuzzJSONRoundTrip(f *testing.F) {
	for _, tc := range hardValues {
		f.Add("K", tc.v, "<&>\u2028")
	}
	f.Fuzz(func(t *testing.T, key, v1, v2 string) {
		env := map[string]string{"A": v1, key: v2}
		out, err := Render(JSON, env)
		checkRenderError(t, err, wantKeyError(JSON, env, func(k, v string) error {
			switch {
			case !fetch.ValidKey(k):
				return ErrInvalidKey
			case !utf8.ValidString(v):
				return ErrInvalidUTF8
			}
			return nil
		}))
		if err != nil {
			return
		}
		if want := encodingJSON(t, env); !bytes.Equal(out, want) {
			t.Fatalf("Render vs encoding/json: %s", diffAt(out, want))
		}
		var got map[string]string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("json.Unmarshal: %v", err)
		}
		if d := diffKeys(got, env); d != nil {
			t.Fatalf("json.Unmarshal gives back different values for keys %v", d)
		}
	})
}
