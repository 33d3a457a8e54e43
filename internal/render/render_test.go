package render

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/joho/godotenv"
)

// hardValues are the values every format must carry exactly. Test output
// names a case by its name, never by its value.
var hardValues = []struct{ name, v string }{
	{"newline", "line1\nline2"},
	{"crlf", "crlf\r\n"},
	{"double-quotes", `he said "hi"`},
	{"single-quote", "it's"},
	{"dollars", "$HOME ${X} $"},
	{"bang", "!bang"},
	{"backslash", `back\slash`},
	{"trailing-backslash", `trailing\`},
	{"leading-zeros", "007"},
	{"spaces", "  spaced  "},
	{"hash", "#hash"},
	{"equals", "a=b"},
	{"unicode", "ünïcødé 😀"},
	{"empty", ""},
	{"tab", "\t"},
	{"trailing-quote", `say "hi"`},
	{"only-quote", `"`},
	{"only-quotes", `"""`},
	{"only-backslash", `\`},
	{"backslashes", `\\\`},
	{"escaped-dollar", `\$HOME`},
	{"escaped-n", `\n\r\t`},
	{"backslash-newline", "\\\n"},
	{"backslash-quote-end", `\"`},
	{"expansion-of-zero", "${0}$0"},
	{"paren-expansion", "$(A) $(echo hi) `id`"},
	{"cr-only", "\r"},
	{"leading-quote-and-space", `" x`},
	{"yaml-ish", "a: b # c"},
	{"nul", "a\x00b"},
	{"invalid-utf8", "\xff\xfe"},
	{"nel-nbsp", "\u0085\u00a0"},
	{"line-separators", "\u2028\u2029"},
	{"controls", "\x01\x1f\x7f\b\f"},
	{"all-bytes", allBytes()},
}

// allBytes is every byte value but NUL, in order.
func allBytes() string {
	b := make([]byte, 255)
	for i := range b {
		b[i] = byte(i + 1)
	}
	return string(b)
}

// diffAt describes where got and want differ without printing either.
func diffAt(got, want []byte) string {
	n := 0
	for n < len(got) && n < len(want) && got[n] == want[n] {
		n++
	}
	return fmt.Sprintf("output differs from want at byte %d (got %d bytes, want %d)", n, len(got), len(want))
}

// diffKeys names the keys whose values differ between got and want.
func diffKeys(got, want map[string]string) []string {
	var keys []string
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			keys = append(keys, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

func TestParseFormat(t *testing.T) {
	tests := []struct {
		in      string
		want    Format
		wantErr bool
	}{
		{"", Dotenv, false},
		{"dotenv", Dotenv, false},
		{"shell", Shell, false},
		{"json", JSON, false},
		{"JSON", "", true},
		{"env", "", true},
		{"yaml", "", true},
	}
	for _, tt := range tests {
		got, err := ParseFormat(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("ParseFormat(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "dotenv, shell or json") {
			t.Errorf("ParseFormat(%q) error %q does not name the accepted formats", tt.in, err)
		}
	}
}

func TestContentType(t *testing.T) {
	for f, want := range map[Format]string{
		Dotenv: "text/plain; charset=utf-8",
		Shell:  "text/plain; charset=utf-8",
		JSON:   "application/json",
	} {
		if got := f.ContentType(); got != want {
			t.Errorf("%s.ContentType() = %q, want %q", f, got, want)
		}
	}
}

func TestDotenv(t *testing.T) {
	want := map[string]string{
		"newline":            `K="line1\nline2"` + "\n",
		"crlf":               `K="crlf\r\n"` + "\n",
		"double-quotes":      `K="he said \"hi\"${0}"` + "\n",
		"single-quote":       `K="it's"` + "\n",
		"dollars":            `K="\$HOME \${X} \$"` + "\n",
		"bang":               `K="!bang"` + "\n",
		"backslash":          `K="back\\slash"` + "\n",
		"trailing-backslash": `K="trailing\\""` + "\n",
		"leading-zeros":      `K="007"` + "\n",
		"spaces":             `K="  spaced  "` + "\n",
		"hash":               `K="#hash"` + "\n",
		"equals":             `K="a=b"` + "\n",
		"unicode":            `K="ünïcødé 😀"` + "\n",
		"empty":              `K=""` + "\n",
		"tab":                "K=\"\t\"\n",
		"trailing-quote":     `K="say \"hi\"${0}"` + "\n",
		"only-quote":         `K="\"${0}"` + "\n",
		"only-backslash":     `K="\\""` + "\n",
		"nul":                "K=\"a\x00b\"\n",
	}
	for _, tc := range hardValues {
		t.Run(tc.name, func(t *testing.T) {
			in := map[string]string{"K": tc.v}
			out, err := Render(Dotenv, in)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if w, ok := want[tc.name]; ok && string(out) != w {
				t.Errorf("Render: %s", diffAt(out, []byte(w)))
			}
			got, err := godotenv.Unmarshal(string(out))
			if err != nil {
				t.Fatalf("godotenv.Unmarshal: %v", err)
			}
			if d := diffKeys(got, in); d != nil {
				t.Errorf("godotenv.Unmarshal gives back different values for keys %v", d)
			}
		})
	}
}

// TestDotenvAllTogether renders every hard value in one file next to keys
// that a failed `$` escape would expand.
func TestDotenvAllTogether(t *testing.T) {
	in := map[string]string{"A": "alpha", "HOME": "/home/x", "X": "ex", "ZZ": "$A${A}$HOME${X}"}
	for i, tc := range hardValues {
		in[fmt.Sprintf("V%02d", i)] = tc.v
	}
	out, err := Render(Dotenv, in)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	got, err := godotenv.Unmarshal(string(out))
	if err != nil {
		t.Fatalf("godotenv.Unmarshal: %v", err)
	}
	if d := diffKeys(got, in); d != nil {
		t.Errorf("godotenv.Unmarshal gives back different values for keys %v", d)
	}
}

// sourceShell writes src to a file, sources it with the real /bin/sh and
// returns the values of keys as the shell holds them.
func sourceShell(t testing.TB, src []byte, keys []string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "env.sh")
	if err := os.WriteFile(file, src, 0o600); err != nil {
		t.Fatal(err)
	}
	script := `. "$1" || exit 9; printf '%s\0'`
	for _, k := range keys {
		script += ` "$` + k + `"` // keys are valid names, safe to splice
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", script, "sh", file)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// stderr could quote a value from the file; report its size only.
		t.Fatalf("/bin/sh sourcing the output: %v (%d bytes on stderr)", err, stderr.Len())
	}
	if stderr.Len() > 0 {
		t.Fatalf("/bin/sh sourcing the output wrote %d bytes on stderr", stderr.Len())
	}
	parts := strings.Split(stdout.String(), "\x00")
	if len(parts) != len(keys)+1 || parts[len(keys)] != "" {
		t.Fatalf("/bin/sh printed %d NUL-terminated fields, want %d", len(parts)-1, len(keys))
	}
	got := make(map[string]string, len(keys))
	for i, k := range keys {
		got[k] = parts[i]
	}
	return got
}

func TestShell(t *testing.T) {
	want := map[string]string{
		"newline":        "K='line1\nline2'\n",
		"single-quote":   `K='it'\''s'` + "\n",
		"dollars":        `K='$HOME ${X} $'` + "\n",
		"backslash":      `K='back\slash'` + "\n",
		"empty":          `K=''` + "\n",
		"double-quotes":  `K='he said "hi"'` + "\n",
		"only-backslash": `K='\'` + "\n",
	}
	in := map[string]string{}
	var keys []string
	for i, tc := range hardValues {
		if strings.IndexByte(tc.v, 0) >= 0 {
			continue // TestErrors covers NUL
		}
		if w, ok := want[tc.name]; ok {
			out, err := Render(Shell, map[string]string{"K": tc.v})
			if err != nil {
				t.Fatalf("%s: Render: %v", tc.name, err)
			}
			if string(out) != w {
				t.Errorf("%s: Render: %s", tc.name, diffAt(out, []byte(w)))
			}
		}
		k := fmt.Sprintf("V%02d", i)
		in[k] = tc.v
		keys = append(keys, k)
	}
	in["Q"] = "''''"
	keys = append(keys, "Q")
	out, err := Render(Shell, in)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	// One sh process for all values keeps this fast.
	got := sourceShell(t, out, keys)
	if d := diffKeys(got, in); d != nil {
		t.Errorf("/bin/sh gives back different values for keys %v", d)
	}
}

// encodingJSON is what encoding/json writes for env.
func encodingJSON(t testing.TB, env map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if env == nil {
		env = map[string]string{}
	}
	if err := enc.Encode(env); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestJSON(t *testing.T) {
	want := map[string]string{
		"newline":         `{"K":"line1\nline2"}` + "\n",
		"double-quotes":   `{"K":"he said \"hi\""}` + "\n",
		"unicode":         `{"K":"ünïcødé 😀"}` + "\n",
		"empty":           `{"K":""}` + "\n",
		"nul":             `{"K":"a\u0000b"}` + "\n",
		"line-separators": `{"K":"\u2028\u2029"}` + "\n",
		"controls":        `{"K":"\u0001\u001f` + "\x7f" + `\b\f"}` + "\n",
		"paren-expansion": `{"K":"$(A) $(echo hi) ` + "`id`" + `"}` + "\n",
	}
	for _, tc := range hardValues {
		t.Run(tc.name, func(t *testing.T) {
			in := map[string]string{"K": tc.v, "A": "<&>"}
			out, err := Render(JSON, in)
			if !utf8.ValidString(tc.v) {
				if !errors.Is(err, ErrInvalidUTF8) {
					t.Fatalf("Render: got error %v, want ErrInvalidUTF8", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if w := encodingJSON(t, in); !bytes.Equal(out, w) {
				t.Errorf("Render vs encoding/json: %s", diffAt(out, w))
			}
			if w, ok := want[tc.name]; ok {
				one, _ := Render(JSON, map[string]string{"K": tc.v})
				if string(one) != w {
					t.Errorf("Render: %s", diffAt(one, []byte(w)))
				}
			}
			var got map[string]string
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("json.Unmarshal: %v", err)
			}
			if d := diffKeys(got, in); d != nil {
				t.Errorf("json.Unmarshal gives back different values for keys %v", d)
			}
		})
	}
}

func TestEmpty(t *testing.T) {
	for _, tt := range []struct {
		f    Format
		want string
	}{{Dotenv, ""}, {Shell, ""}, {JSON, "{}\n"}} {
		for _, env := range []map[string]string{nil, {}} {
			got, err := Render(tt.f, env)
			if err != nil || string(got) != tt.want {
				t.Errorf("Render(%s, empty) = %q, %v; want %q", tt.f, got, err, tt.want)
			}
		}
	}
}

func TestSorted(t *testing.T) {
	in := map[string]string{"b": "2", "A": "1", "_z": "4", "a": "3", "B1": "5"}
	tests := map[Format]string{
		Dotenv: "A=\"1\"\nB1=\"5\"\n_z=\"4\"\na=\"3\"\nb=\"2\"\n",
		Shell:  "A='1'\nB1='5'\n_z='4'\na='3'\nb='2'\n",
		JSON:   `{"A":"1","B1":"5","_z":"4","a":"3","b":"2"}` + "\n",
	}
	for f, want := range tests {
		got, err := Render(f, in)
		if err != nil || string(got) != want {
			t.Errorf("Render(%s) = %q, %v; want %q", f, got, err, want)
		}
	}
}

func TestErrors(t *testing.T) {
	const secret = "s3cr3t-VALUE-xyzzy"
	tests := []struct {
		name    string
		f       Format
		env     map[string]string
		wantKey string
		want    error
	}{
		{"empty key", Dotenv, map[string]string{"": secret}, "", ErrInvalidKey},
		{"digit first", Shell, map[string]string{"1A": secret}, "1A", ErrInvalidKey},
		{"dash", JSON, map[string]string{"A-B": secret}, "A-B", ErrInvalidKey},
		{"space", Dotenv, map[string]string{"A B": secret}, "A B", ErrInvalidKey},
		{"newline key", Dotenv, map[string]string{"A\nB=x": secret}, "A\nB=x", ErrInvalidKey},
		{"non-ascii key", Shell, map[string]string{"Ä": secret}, "Ä", ErrInvalidKey},
		{"long key", JSON, map[string]string{strings.Repeat("A", 257): secret}, strings.Repeat("A", 257), ErrInvalidKey},
		{"first bad key in order", Dotenv, map[string]string{"ok": secret, "z-z": secret, "a-a": secret}, "a-a", ErrInvalidKey},
		{"shell nul", Shell, map[string]string{"A": "ok", "N": secret + "\x00"}, "N", ErrNUL},
		{"json invalid utf-8", JSON, map[string]string{"A": "ok", "U": secret + "\xc3"}, "U", ErrInvalidUTF8},
		{"json lone surrogate", JSON, map[string]string{"U": secret + "\xed\xa0\x80"}, "U", ErrInvalidUTF8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := []byte("prefix")
			got, err := Append(dst, tt.f, tt.env)
			var ke *KeyError
			if !errors.As(err, &ke) {
				t.Fatalf("Append: got error %v, want a *KeyError", err)
			}
			if ke.Key != tt.wantKey || ke.Format != tt.f || !errors.Is(err, tt.want) {
				t.Errorf("Append: got KeyError{%s, %q, %v}, want {%s, %q, %v}", ke.Format, ke.Key, ke.Err, tt.f, tt.wantKey, tt.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Append: error message carries the value")
			}
			if string(got) != "prefix" {
				t.Errorf("Append on error changed dst to %d bytes, want it unchanged", len(got))
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "render "+string(tt.f)+": key ") {
				t.Errorf("Append: error %q lacks the context prefix", msg)
			}
		})
	}
	if _, err := Render("yaml", nil); err == nil || !strings.Contains(err.Error(), "dotenv, shell or json") {
		t.Errorf("Render(yaml): got error %v, want one naming the accepted formats", err)
	}
}

func TestAppendKeepsPrefix(t *testing.T) {
	for _, f := range []Format{Dotenv, Shell, JSON} {
		got, err := Append([]byte("pre:"), f, map[string]string{"K": "v"})
		want, _ := Render(f, map[string]string{"K": "v"})
		if err != nil || string(got) != "pre:"+string(want) {
			t.Errorf("Append(%s) = %q, %v; want %q", f, got, err, "pre:"+string(want))
		}
	}
}

// env20 is a 20-key env with a few values that need escaping.
func env20() map[string]string {
	env := make(map[string]string, 20)
	for i := range 20 {
		v := fmt.Sprintf("value-%02d-%s", i, strings.Repeat("x", 24))
		switch i % 5 {
		case 1:
			v += "\nsecond line"
		case 2:
			v += ` "quoted" $HOME it's`
		}
		env[fmt.Sprintf("SECRET_KEY_%02d", i)] = v
	}
	return env
}

func TestAppendDoesNotAllocate(t *testing.T) {
	env := env20()
	for _, f := range []Format{Dotenv, Shell, JSON} {
		buf := make([]byte, 0, 8192)
		allocs := testing.AllocsPerRun(50, func() {
			var err error
			if buf, err = Append(buf[:0], f, env); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("Append(%s) with room in dst: %v allocations per run, want 0", f, allocs)
		}
	}
}

func BenchmarkRender(b *testing.B) {
	env := env20()
	for _, f := range []Format{Dotenv, Shell, JSON} {
		b.Run(string(f), func(b *testing.B) {
			out, _ := Render(f, env)
			b.SetBytes(int64(len(out)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Render(f, env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAppend(b *testing.B) {
	env := env20()
	for _, f := range []Format{Dotenv, Shell, JSON} {
		b.Run(string(f), func(b *testing.B) {
			buf, _ := Render(f, env)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if buf, err = Append(buf[:0], f, env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
