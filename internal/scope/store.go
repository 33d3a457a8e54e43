package scope

import (
	"bytes"
	"crypto/subtle"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// TokenStoreVersion is the token store version this package reads and writes.
const TokenStoreVersion = 1

// MaxTokenStoreSize bounds the token store file.
const MaxTokenStoreSize = 4 << 20 // 4 MiB

// MaxNoteLen bounds a token's note.
const MaxNoteLen = 256

// TokenRecord is the stored form of a caller token: its id, the hex SHA-256
// of the whole token, and its scope. Tenants are explicit tenant names (no
// wildcard); Keys, when not empty, are globs (see ValidKeyGlob) that narrow
// the keys the token receives. A zero Expires means the token does not
// expire.
type TokenRecord struct {
	ID      string    `json:"id"`
	Hash    string    `json:"sha256"`
	Tenants []string  `json:"tenants"`
	Keys    []string  `json:"keys,omitempty"`
	Expires time.Time `json:"expires,omitzero"`
	Note    string    `json:"note,omitempty"`
	Created time.Time `json:"created"`
}

// TokenStore is the set of caller tokens, as stored in the state dir. It is
// a plain value: not safe for concurrent mutation. The server swaps in a new
// *TokenStore on reload and only reads it (Verify) afterwards.
type TokenStore struct {
	Version int           `json:"version"`
	Tokens  []TokenRecord `json:"tokens"`
}

// NewTokenStore returns an empty store.
func NewTokenStore() *TokenStore {
	return &TokenStore{Version: TokenStoreVersion, Tokens: []TokenRecord{}}
}

// ParseTokenStore reads and validates a token store (at most
// MaxTokenStoreSize bytes, unknown fields and duplicate keys refused,
// "version" required and equal to TokenStoreVersion, every record valid, no
// duplicate ids or hashes). Errors name the JSON path (tokens[2].tenants[0]).
func ParseTokenStore(r io.Reader) (*TokenStore, error) {
	data, err := readBounded(r, MaxTokenStoreSize, "token store")
	if err != nil {
		return nil, err
	}
	if err := checkVersion(data, TokenStoreVersion); err != nil {
		return nil, err
	}
	s := &TokenStore{Tokens: []TokenRecord{}}
	rd := newReader(data)
	sawTokens := false
	err = rd.object("", func(k string, kp jpath) error {
		var err error
		switch k {
		case "version":
			if s.Version, err = rd.integer(kp); err == nil && s.Version != TokenStoreVersion {
				err = versionError(kp, s.Version, TokenStoreVersion)
			}
		case "tokens":
			sawTokens = true
			err = rd.array(kp, func(_ int, ip jpath) error {
				rec, err := readRecord(rd, ip)
				s.Tokens = append(s.Tokens, rec)
				return err
			})
		default:
			err = jpath("").errf("unknown field %s", quoteName(k))
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := rd.end(); err != nil {
		return nil, err
	}
	if s.Version == 0 {
		return nil, jpath("version").errf("required (set \"version\": %d)", TokenStoreVersion)
	}
	if !sawTokens {
		return nil, jpath("tokens").errf("required")
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

func readRecord(rd *reader, p jpath) (TokenRecord, error) {
	var rec TokenRecord
	err := rd.object(p, func(k string, kp jpath) error {
		var err error
		switch k {
		case "id":
			rec.ID, err = rd.str(kp)
		case "sha256":
			rec.Hash, err = rd.str(kp)
		case "tenants":
			rec.Tenants, err = rd.strs(kp)
		case "keys":
			rec.Keys, err = rd.strs(kp)
		case "expires":
			rec.Expires, err = rd.timestamp(kp)
		case "note":
			rec.Note, err = rd.str(kp)
		case "created":
			rec.Created, err = rd.timestamp(kp)
		default:
			err = p.errf("unknown field %s", quoteName(k))
		}
		return err
	})
	return rec, err
}

// validate checks every record and the uniqueness of ids and hashes, and
// normalizes records (see TokenRecord.normalize).
func (s *TokenStore) validate() error {
	ids := make(map[string]int, len(s.Tokens))
	hashes := make(map[string]int, len(s.Tokens))
	for i := range s.Tokens {
		p := jpath("tokens").index(i)
		rec := &s.Tokens[i]
		if err := rec.check(p); err != nil {
			return err
		}
		rec.normalize()
		if j, dup := ids[rec.ID]; dup {
			return p.key("id").errf("duplicate of tokens[%d].id", j)
		}
		ids[rec.ID] = i
		if j, dup := hashes[rec.Hash]; dup {
			return p.key("sha256").errf("duplicate of tokens[%d].sha256", j)
		}
		hashes[rec.Hash] = i
	}
	return nil
}

// Validate checks the record as Add and ParseTokenStore do: a token id, a
// lowercase hex SHA-256, at least one tenant (valid names, no duplicates, no
// wildcard), valid key globs, a printable note of at most MaxNoteLen bytes
// that does not contain a token, a creation time, and an expiry (if any)
// after it.
func (rec *TokenRecord) Validate() error { return rec.check("") }

func (rec *TokenRecord) check(p jpath) error {
	if !ValidTokenID(rec.ID) {
		return p.key("id").errf("not a token id (want %d characters of a-z and 2-7)", TokenIDLen)
	}
	if !validHexHash(rec.Hash) {
		return p.key("sha256").errf("not a lowercase hex SHA-256")
	}
	tp := p.key("tenants")
	if len(rec.Tenants) == 0 {
		return tp.errf("at least one tenant is required (tokens name tenants explicitly; there is no wildcard)")
	}
	for i, t := range rec.Tenants {
		if !ValidTenantName(t) {
			return tp.index(i).errf("%s (tokens name tenants explicitly; there is no wildcard)", tenantNameRule)
		}
		if j := slices.Index(rec.Tenants[:i], t); j >= 0 {
			return tp.index(i).errf("duplicate of tenants[%d]", j)
		}
	}
	kp := p.key("keys")
	for i, g := range rec.Keys {
		if !ValidKeyGlob(g) {
			return kp.index(i).errf("not a valid key glob (env name characters with *, ? and [...] classes)")
		}
		if j := slices.Index(rec.Keys[:i], g); j >= 0 {
			return kp.index(i).errf("duplicate of keys[%d]", j)
		}
	}
	np := p.key("note")
	switch {
	case len(rec.Note) > MaxNoteLen:
		return np.errf("longer than %d bytes", MaxNoteLen)
	case !utf8.ValidString(rec.Note), strings.ContainsFunc(rec.Note, unicode.IsControl):
		return np.errf("must be one line of printable text")
	case LooksLikeToken(rec.Note):
		return np.errf("contains %q: a caller token must never be stored in a note", TokenPrefix)
	}
	if rec.Created.IsZero() {
		return p.key("created").errf("required")
	}
	if y := rec.Created.UTC().Year(); y < 1 || y > 9999 {
		return p.key("created").errf("time out of range")
	}
	if !rec.Expires.IsZero() {
		if y := rec.Expires.UTC().Year(); y < 1 || y > 9999 {
			return p.key("expires").errf("time out of range")
		}
		if !rec.Expires.After(rec.Created) {
			return p.key("expires").errf("must be after created")
		}
	}
	return nil
}

// normalize puts times in UTC without a monotonic reading and drops an
// empty key list, so that a record survives Marshal and Parse unchanged.
func (rec *TokenRecord) normalize() {
	rec.Created = rec.Created.UTC().Round(0)
	if !rec.Expires.IsZero() {
		rec.Expires = rec.Expires.UTC().Round(0)
	}
	if len(rec.Keys) == 0 {
		rec.Keys = nil
	}
}

func validHexHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// clone returns a deep copy of rec.
func (rec *TokenRecord) clone() *TokenRecord {
	c := *rec
	c.Tenants = slices.Clone(rec.Tenants)
	c.Keys = slices.Clone(rec.Keys)
	return &c
}

// Add validates rec and appends it. It refuses a duplicate id or hash.
func (s *TokenStore) Add(rec TokenRecord) error {
	if err := rec.Validate(); err != nil {
		return fmt.Errorf("add token: %w", err)
	}
	r := rec.clone()
	r.normalize()
	for _, o := range s.Tokens {
		if o.ID == r.ID {
			return fmt.Errorf("add token: id %s already exists", r.ID)
		}
		if o.Hash == r.Hash {
			return fmt.Errorf("add token: a token with the same hash already exists")
		}
	}
	s.Tokens = append(s.Tokens, *r)
	return nil
}

// Remove deletes the token with the given id and reports whether it existed.
func (s *TokenStore) Remove(id string) bool {
	n := len(s.Tokens)
	s.Tokens = slices.DeleteFunc(s.Tokens, func(r TokenRecord) bool { return r.ID == id })
	return len(s.Tokens) != n
}

// Lookup returns a copy of the record with the given id, or nil.
func (s *TokenStore) Lookup(id string) *TokenRecord {
	for i := range s.Tokens {
		if s.Tokens[i].ID == id {
			return s.Tokens[i].clone()
		}
	}
	return nil
}

// Verify checks a presented caller token: strict format, lookup by id, a
// constant-time comparison of its SHA-256 with the stored hash, and expiry
// (a token is expired from its Expires instant on). It returns a copy of the
// record, or ErrUnauthorized for every kind of failure.
//
// The id is not secret (token list prints it); only the comparison of the
// hash, which covers the secret part, is constant-time.
func (s *TokenStore) Verify(token string, now time.Time) (*TokenRecord, error) {
	id, ok := parseToken(token)
	if !ok || s == nil {
		return nil, ErrUnauthorized
	}
	got := hashToken(token)
	for i := range s.Tokens {
		rec := &s.Tokens[i]
		if rec.ID != id {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(got), []byte(rec.Hash)) != 1 {
			return nil, ErrUnauthorized
		}
		if !rec.Expires.IsZero() && !now.Before(rec.Expires) {
			return nil, ErrUnauthorized
		}
		return rec.clone(), nil
	}
	return nil, ErrUnauthorized
}

// Marshal returns the store as indented JSON that ParseTokenStore reads
// back. It refuses an invalid store.
func (s *TokenStore) Marshal() ([]byte, error) {
	out := TokenStore{Version: s.Version, Tokens: s.Tokens}
	if out.Tokens == nil {
		out.Tokens = []TokenRecord{}
	}
	data, err := marshalIndent(out)
	if err != nil {
		return nil, fmt.Errorf("marshal token store: %w", err)
	}
	if _, err := ParseTokenStore(bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("marshal token store: invalid: %w", err)
	}
	return data, nil
}
