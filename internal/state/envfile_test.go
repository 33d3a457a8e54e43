package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/joho/godotenv"
)

func TestLoadEnvFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "env")
	writeFile(t, good, strings.Join([]string{
		"# provider credentials",
		"BROKER_SM_TOKEN_ACME=0.tok.en:key",
		"export BW_CLIENTID=user.1234",
		`BW_CLIENTSECRET="sec ret"`,
		`BW_PASSWORD='pa$$word\n'`,
		"",
	}, "\n"), 0o600)
	env, err := LoadEnvFile(good)
	if err != nil {
		t.Fatalf("LoadEnvFile = %v", err)
	}
	want := map[string]string{
		"BROKER_SM_TOKEN_ACME": "0.tok.en:key",
		"BW_CLIENTID":          "user.1234",
		"BW_CLIENTSECRET":      "sec ret",
		"BW_PASSWORD":          `pa$$word\n`,
	}
	if !reflect.DeepEqual(env, want) {
		// Compare key by key, naming keys only.
		for k := range want {
			if env[k] != want[k] {
				t.Errorf("key %s has the wrong value", k)
			}
		}
		if len(env) != len(want) {
			t.Errorf("got %d keys, want %d", len(env), len(want))
		}
	}

	open := filepath.Join(dir, "open")
	writeFile(t, open, "A=1\n", 0o644)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	writeFile(t, big, "A="+strings.Repeat("x", MaxEnvFileSize)+"\n", 0o600)

	tests := []struct {
		name, path, want string
	}{
		{"0644", open, fmt.Sprintf("provider env file %s is readable by group or others (mode 0644); run: chmod 600 %s", open, open)},
		{"symlink", link, fmt.Sprintf("provider env file %s is a symbolic link, which is refused; use the real path %s", link, good)},
		{"fifo", fifo, fmt.Sprintf("provider env file %s is not a regular file", fifo)},
		{"too big", big, fmt.Sprintf("provider env file %s: larger than %d bytes", big, MaxEnvFileSize)},
		{"missing", filepath.Join(dir, "nope"), fmt.Sprintf("provider env file %s: no such file or directory", filepath.Join(dir, "nope"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := LoadEnvFile(tt.path)
			if err == nil || err.Error() != tt.want {
				t.Errorf("LoadEnvFile = %d keys, %v; want error %q", len(env), err, tt.want)
			}
		})
	}
	if _, err := LoadEnvFile(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file error %v does not wrap fs.ErrNotExist", err)
	}
}

// secretMark is in every malformed input below: no error may contain it.
const secretMark = "s3cr3tVALUE"

func TestParseEnvErrors(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"unterminated double", "A=1\nB=\"" + secretMark + "\n", "line 2: unterminated quoted value"},
		{"unterminated single", "A=1\n\nC='" + secretMark, "line 3: unterminated quoted value"},
		{"unterminated after comment with quote", "# it's \"quoted\nX=1\nA='" + secretMark + "\n", "line 3: unterminated quoted value"},
		{"unterminated after multi-line value", "A=\"multi\nline\"\nB=\"" + secretMark + "\nmore\n", "line 3: unterminated quoted value"},
		{"unterminated with escaped quotes", "A=\"" + secretMark + "\\\"\n", "line 1: unterminated quoted value"},
		{"unterminated crlf", "A=1\r\nB=\"" + secretMark + "\r\n", "line 2: unterminated quoted value"},
		{"bad name", "A=1\nnot a line " + secretMark + "\n", "line 2: invalid character in a variable name (want NAME=value)"},
		{"bad name first line", secretMark + " oops\nA=1\n", "line 1: invalid character in a variable name (want NAME=value)"},
		{"bad name after multi-line", "A='x\ny'\nB=2\n-" + secretMark + "=1\n", "line 4: invalid character in a variable name (want NAME=value)"},
		{"bad name with invalid utf-8", "A=1\n\x80" + secretMark + "=1\n", "line 2: invalid character in a variable name (want NAME=value)"},
		{"bad name crlf", "A=1\r\nB=2\r\n$" + secretMark + "\r\n", "line 3: invalid character in a variable name (want NAME=value)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := parseEnv([]byte(tt.input))
			if err == nil {
				t.Fatalf("parseEnv succeeded with %d keys, want %q", len(env), tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error = %q, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secretMark) {
				t.Errorf("error contains file content")
			}
		})
	}
}

var envErrRE = regexp.MustCompile(`^(line ([0-9]+): )?(` + regexp.QuoteMeta(msgBadName) + `|` + msgUnterminated + `|` + msgSyntax + `)$`)

func FuzzParseEnv(f *testing.F) {
	f.Add([]byte("A=1\nB='x'\nC=\"y\"\n"))
	f.Add([]byte("A=\"" + secretMark))
	f.Add([]byte("A=1\nbad line\n"))
	f.Add([]byte("export A=1 # c\n\r\nB:2"))
	f.Add([]byte("A='\\'\nB=\"\\\"\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := parseEnv(data)
		want, wantErr := godotenv.UnmarshalBytes(data)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("parseEnv error %v, godotenv error %v", err, wantErr)
		}
		if err == nil {
			if !reflect.DeepEqual(env, want) {
				t.Fatalf("parseEnv and godotenv disagree")
			}
			return
		}
		m := envErrRE.FindStringSubmatch(err.Error())
		if m == nil {
			t.Fatalf("error %q is not one of the generic messages", err)
		}
		if m[2] != "" {
			n, _ := strconv.Atoi(m[2])
			lines := strings.Count(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n") + 1
			if n < 1 || n > lines {
				t.Fatalf("line %d outside 1..%d", n, lines)
			}
		}
	})
}
