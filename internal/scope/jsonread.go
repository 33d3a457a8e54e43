package scope

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// This file holds a small strict JSON reader on top of json.Decoder's token
// stream. Decoding into structs with DisallowUnknownFields would refuse
// unknown fields too, but encoding/json's errors lose the path (no map keys,
// no array indexes; an unknown field is reported without its parent) and it
// accepts duplicate keys, keeping the last. The broker's files are operator-written
// security configuration, so every error names the JSON path and a
// duplicated key (a tenant defined twice) is refused.

// PathError is a parse or validation error at a JSON path such as
// tenants.acme.project_ids[0]. Msg never contains a credential.
type PathError struct {
	Path string // "" for the top level
	Msg  string
}

func (e *PathError) Error() string {
	p := e.Path
	if p == "" {
		p = "top level"
	}
	return p + ": " + e.Msg
}

// jpath is a JSON path being built up while reading.
type jpath string

func (p jpath) key(k string) jpath {
	if simpleKey(k) {
		if p == "" {
			return jpath(k)
		}
		return p + "." + jpath(k)
	}
	return p + "[" + jpath(quoteName(k)) + "]"
}

func (p jpath) index(i int) jpath { return p + jpath("["+strconv.Itoa(i)+"]") }

func (p jpath) errf(format string, args ...any) error {
	return &PathError{Path: string(p), Msg: fmt.Sprintf(format, args...)}
}

// simpleKey reports whether k can be written after a dot in a path.
func simpleKey(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c == '_' || c == '-' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// quoteName quotes a name (a key, a tenant name) for a message, truncated so
// that a hostile or broken file cannot flood a log line through it.
func quoteName(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "…"
	}
	return strconv.Quote(s)
}

// readBounded reads all of r, refusing more than max bytes.
func readBounded(r io.Reader, max int64, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", what, max)
	}
	return data, nil
}

// checkVersion looks for a top-level "version" before the strict read, so
// that a file written for a newer broker is refused with a version error
// rather than with an unknown-field error somewhere inside it. It ignores
// anything it cannot read; the strict read reports that.
func checkVersion(data []byte, want int) error {
	var v struct {
		Version json.RawMessage `json:"version"`
	}
	if json.Unmarshal(data, &v) != nil || v.Version == nil {
		return nil
	}
	if n, err := strconv.Atoi(string(bytes.TrimSpace(v.Version))); err == nil && n != want {
		return versionError(jpath("version"), n, want)
	}
	return nil
}

func versionError(p jpath, got, want int) error {
	return p.errf("unsupported version %d (this broker reads version %d)", got, want)
}

// reader reads one JSON document strictly.
type reader struct {
	dec  *json.Decoder
	data []byte
}

func newReader(data []byte) *reader {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return &reader{dec: dec, data: data}
}

// token returns the next token, turning syntax errors into path errors with
// a line and column.
func (r *reader) token(p jpath) (json.Token, error) {
	tok, err := r.dec.Token()
	if err == nil {
		return tok, nil
	}
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		line, col := lineCol(r.data, se.Offset)
		return nil, p.errf("invalid JSON near line %d, column %d: %s", line, col, se.Error())
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return nil, p.errf("unexpected end of JSON")
	}
	return nil, p.errf("invalid JSON: %v", err)
}

func lineCol(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line = bytes.Count(before, []byte("\n")) + 1
	// Offset counts the bytes before the offending one; columns count from 1.
	col = int(off) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

func describe(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			return "an object"
		case '[':
			return "an array"
		}
		return "a " + v.String()
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", tok)
}

// object reads an object at p and calls fn for each key with the key's path;
// fn must read the value. Duplicate keys are refused.
func (r *reader) object(p jpath, fn func(key string, kp jpath) error) error {
	tok, err := r.token(p)
	if err != nil {
		return err
	}
	if tok != json.Delim('{') {
		return p.errf("expected an object, got %s", describe(tok))
	}
	seen := make(map[string]bool)
	for r.dec.More() {
		tok, err := r.token(p)
		if err != nil {
			return err
		}
		k, ok := tok.(string)
		if !ok { // the decoder reports this as a syntax error; be safe anyway
			return p.errf("expected a key, got %s", describe(tok))
		}
		kp := p.key(k)
		if seen[k] {
			return kp.errf("duplicate key")
		}
		seen[k] = true
		if err := fn(k, kp); err != nil {
			return err
		}
	}
	_, err = r.token(p) // '}'
	return err
}

// array reads an array at p and calls fn for each element, which fn reads.
func (r *reader) array(p jpath, fn func(i int, ip jpath) error) error {
	tok, err := r.token(p)
	if err != nil {
		return err
	}
	if tok != json.Delim('[') {
		return p.errf("expected an array, got %s", describe(tok))
	}
	for i := 0; r.dec.More(); i++ {
		if err := fn(i, p.index(i)); err != nil {
			return err
		}
	}
	_, err = r.token(p) // ']'
	return err
}

func (r *reader) str(p jpath) (string, error) {
	tok, err := r.token(p)
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", p.errf("expected a string, got %s", describe(tok))
	}
	return s, nil
}

func (r *reader) strs(p jpath) ([]string, error) {
	out := []string{}
	err := r.array(p, func(_ int, ip jpath) error {
		s, err := r.str(ip)
		out = append(out, s)
		return err
	})
	return out, err
}

func (r *reader) integer(p jpath) (int, error) {
	tok, err := r.token(p)
	if err != nil {
		return 0, err
	}
	num, ok := tok.(json.Number)
	if !ok {
		return 0, p.errf("expected an integer, got %s", describe(tok))
	}
	n, err := strconv.Atoi(string(num))
	if err != nil {
		return 0, p.errf("expected an integer, got %s", quoteName(string(num)))
	}
	return n, nil
}

func (r *reader) duration(p jpath) (Duration, error) {
	s, err := r.str(p)
	if err != nil {
		return Duration{}, err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return Duration{}, p.errf("invalid duration %s (want a Go duration such as \"60s\" or \"5m\")", quoteName(s))
	}
	return Duration{d}, nil
}

func (r *reader) timestamp(p jpath) (time.Time, error) {
	s, err := r.str(p)
	if err != nil {
		return time.Time{}, err
	}
	var t time.Time
	if err := t.UnmarshalText([]byte(s)); err != nil {
		return time.Time{}, p.errf("invalid time %s (want RFC 3339)", quoteName(s))
	}
	t = t.UTC()
	if t.Year() < 1 || t.Year() > 9999 {
		return time.Time{}, p.errf("time out of range")
	}
	return t, nil
}

// marshalIndent is json.MarshalIndent without HTML escaping (a collection
// named "R&D" stays readable), ending in a newline.
func marshalIndent(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// end checks that nothing but white space follows the document.
func (r *reader) end() error {
	if _, err := r.dec.Token(); err != io.EOF {
		return (jpath("")).errf("unexpected data after the JSON document (want exactly one JSON value)")
	}
	return nil
}
