// Package render writes a tenant's env in the broker's output formats
// (DESIGN.md section 4, "Output formats"): dotenv, shell and JSON.
//
// Every format is lossless: reading the output back with the format's
// reference reader yields exactly the rendered map, byte for byte, or Render
// refuses the env with a *KeyError naming the offending key (never its value).
//
// # Dotenv
//
// One KEY="value" line per key. The reference reader is
// github.com/joho/godotenv v1.5.1 (godotenv.Unmarshal), whose double-quoted
// values go through three passes: `\n` and `\r` become LF and CR; a backslash
// before any other byte except `$` is dropped; then `$NAME`, `${NAME}` are
// expanded unless the `$` is preceded by a backslash, which is then dropped.
// Render therefore writes `\` as `\\`, `"` as `\"`, `$` as `\$`, LF as `\n`
// and CR as `\r`, and every other byte (tabs, unicode, NUL, even invalid
// UTF-8) as is. Two endings need care because godotenv finds the closing quote
// as the first `"` not preceded by a backslash and then trims every trailing
// `"` from the value:
//   - a value ending in a backslash is closed with `""`: the first quote is
//     taken as escaped, the second closes, and the trim removes the first;
//   - a value ending in `"` gets a trailing `${0}`, an expansion of the name
//     "0" that no valid key can have, so it expands to nothing.
//
// The contract is godotenv's reading: other dotenv readers (docker compose,
// python-dotenv, a shell) treat some of these escapes differently.
// Do not use godotenv's Marshal: it writes integer-looking values bare, so
// "007" comes back as "7".
//
// # Shell
//
// One KEY='value' line per key, POSIX single-quoted with each single quote
// closed, backslash-escaped and reopened:
//
//	KEY='it'\''s'
//
// so that `. file` in /bin/sh assigns exactly the bytes. The lines
// are plain assignments, not `export`: use `set -a; . ./file; set +a` to
// export them. A shell variable cannot hold a NUL byte, so such a value is
// refused (ErrNUL). Keys that are special to the shell (PATH, IFS, PS1, ...)
// are rendered like any other; sourcing them has their usual effect.
//
// # JSON
//
// One object, keys sorted, followed by a newline: byte for byte what
// encoding/json's Encoder with SetEscapeHTML(false) writes for the map.
// encoding/json replaces invalid UTF-8 with U+FFFD, which is not byte-exact,
// so such a value is refused (ErrInvalidUTF8).
package render

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/hostd/broker/internal/envkey"
)

// Format is an output format name as used by `--format` and `?format=`.
type Format string

// The output formats.
const (
	Dotenv Format = "dotenv"
	Shell  Format = "shell"
	JSON   Format = "json"
)

// ParseFormat returns the Format named s; the empty string means Dotenv.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case "":
		return Dotenv, nil
	case Dotenv, Shell, JSON:
		return f, nil
	}
	const max = 32
	if len(s) > max {
		s = s[:max] + "…"
	}
	return "", fmt.Errorf("unknown output format %q: want dotenv, shell or json", s)
}

// ContentType returns the HTTP Content-Type of f's output.
func (f Format) ContentType() string {
	if f == JSON {
		return "application/json"
	}
	return "text/plain; charset=utf-8"
}

// Reasons a key cannot be rendered, carried by *KeyError.
var (
	// ErrInvalidKey: the key does not satisfy envkey.Valid.
	ErrInvalidKey = errors.New("not a valid environment name (want ^[A-Za-z_][A-Za-z0-9_]*$)")
	// ErrNUL: a shell variable cannot hold the value's NUL byte.
	ErrNUL = errors.New("the value contains a NUL byte, which a shell variable cannot hold")
	// ErrInvalidUTF8: JSON cannot carry the value's invalid UTF-8 byte-exact.
	ErrInvalidUTF8 = errors.New("the value is not valid UTF-8, which JSON cannot carry exactly")
)

// KeyError reports a key that cannot be rendered. Its message names the key
// but never the value. Err is one of ErrInvalidKey, ErrNUL, ErrInvalidUTF8.
type KeyError struct {
	Format Format
	Key    string
	Err    error
}

func (e *KeyError) Error() string {
	return fmt.Sprintf("render %s: key %s: %v", e.Format, envkey.Quote(e.Key), e.Err)
}

// Unwrap returns e.Err.
func (e *KeyError) Unwrap() error { return e.Err }

// Render returns env in format f, keys sorted. See Append.
func Render(f Format, env map[string]string) ([]byte, error) {
	size := 2 // "{}" or nothing, plus slack
	for k, v := range env {
		// key, quoting and separators, value plus a little room for escapes
		size += len(k) + len(v) + len(v)/8 + 8
	}
	return Append(make([]byte, 0, size), f, env)
}

// Append appends env in format f to dst, keys sorted in byte order, and
// returns the extended slice. An unknown format, an invalid key (see
// envkey.Valid) or a value the format cannot carry exactly returns dst
// unchanged and an error (a *KeyError for a key) naming the key but never a
// value. For envs of up to 64 keys Append does not allocate when dst has room.
func Append(dst []byte, f Format, env map[string]string) ([]byte, error) {
	switch f {
	case Dotenv, Shell, JSON:
	default:
		return dst, fmt.Errorf("render: unknown output format %q: want dotenv, shell or json", string(f))
	}
	var stack [64]string
	keys := stack[:0]
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := check(f, k, env[k]); err != nil {
			return dst, err
		}
	}
	if f == JSON {
		dst = append(dst, '{')
	}
	for i, k := range keys {
		v := env[k]
		switch f {
		case Dotenv:
			dst = append(dst, k...)
			dst = append(dst, '=')
			dst = appendDotenvValue(dst, v)
			dst = append(dst, '\n')
		case Shell:
			dst = append(dst, k...)
			dst = append(dst, '=')
			dst = appendShellValue(dst, v)
			dst = append(dst, '\n')
		case JSON:
			if i > 0 {
				dst = append(dst, ',')
			}
			// A valid key is plain ASCII that JSON needs no escape for.
			dst = append(dst, '"')
			dst = append(dst, k...)
			dst = append(dst, '"', ':')
			dst = appendJSONString(dst, v)
		}
	}
	if f == JSON {
		dst = append(dst, '}', '\n')
	}
	return dst, nil
}

// check reports whether k and v can be rendered in f.
func check(f Format, k, v string) error {
	var err error
	switch {
	case !envkey.Valid(k):
		err = ErrInvalidKey
	case f == Shell && strings.IndexByte(v, 0) >= 0:
		err = ErrNUL
	case f == JSON && !utf8.ValidString(v):
		err = ErrInvalidUTF8
	default:
		return nil
	}
	return &KeyError{Format: f, Key: k, Err: err}
}

// appendDotenvValue appends v double-quoted for godotenv v1.5.1; the package
// comment explains the escapes.
func appendDotenvValue(dst []byte, v string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(v); i++ {
		var c byte
		switch v[i] {
		case '\\', '"', '$':
			c = v[i]
		case '\n':
			c = 'n'
		case '\r':
			c = 'r'
		default:
			continue
		}
		dst = append(dst, v[start:i]...)
		dst = append(dst, '\\', c)
		start = i + 1
	}
	dst = append(dst, v[start:]...)
	if n := len(v); n > 0 {
		switch v[n-1] {
		case '\\':
			// godotenv skips a quote after a backslash; close twice and
			// let its trim of trailing quotes drop the first.
			dst = append(dst, '"')
		case '"':
			// godotenv trims trailing quotes from the value; end it with
			// an expansion of "0", which no valid key can be.
			dst = append(dst, "${0}"...)
		}
	}
	return append(dst, '"')
}

// appendShellValue appends v single-quoted for a POSIX shell.
func appendShellValue(dst []byte, v string) []byte {
	dst = append(dst, '\'')
	for {
		i := strings.IndexByte(v, '\'')
		if i < 0 {
			break
		}
		dst = append(dst, v[:i]...)
		dst = append(dst, `'\''`...)
		v = v[i+1:]
	}
	dst = append(dst, v...)
	return append(dst, '\'')
}

const hex = "0123456789abcdef"

// appendJSONString appends valid UTF-8 v as a JSON string exactly as
// encoding/json does with SetEscapeHTML(false).
func appendJSONString(dst []byte, v string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(v); {
		b := v[i]
		if b >= utf8.RuneSelf {
			c, size := utf8.DecodeRuneInString(v[i:])
			if c == '\u2028' || c == '\u2029' {
				dst = append(dst, v[start:i]...)
				dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xF])
				start = i + size
			}
			i += size
			continue
		}
		if b >= 0x20 && b != '"' && b != '\\' {
			i++
			continue
		}
		dst = append(dst, v[start:i]...)
		switch b {
		case '"', '\\':
			dst = append(dst, '\\', b)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
		}
		i++
		start = i
	}
	dst = append(dst, v[start:]...)
	return append(dst, '"')
}
