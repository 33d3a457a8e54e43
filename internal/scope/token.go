package scope

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Caller token layout: TokenPrefix + id + "_" + secret.
const (
	TokenPrefix    = "brk_"
	TokenIDLen     = 12 // lowercase base32 (a-z, 2-7): 60 random bits
	tokenSecretLen = 43 // base64url, no padding, of 32 random bytes
	tokenSecretRaw = 32
	// TokenLen is the length of a whole caller token.
	TokenLen = len(TokenPrefix) + TokenIDLen + 1 + tokenSecretLen
)

const idAlphabet = "abcdefghijklmnopqrstuvwxyz234567"

// redactedToken is how a Token prints.
const redactedToken = TokenPrefix + "[REDACTED]"

// ErrUnauthorized is the one error for a caller token that is missing,
// malformed, unknown, tampered with or expired. The server answers 401.
var ErrUnauthorized = errors.New("unauthorized")

// Token is a caller token. It prints as "brk_[REDACTED]" with fmt, slog and
// encoding/json; call Reveal only to show it once to the operator who minted
// it.
type Token string

// String implements fmt.Stringer and never returns the token.
func (Token) String() string { return redactedToken }

// GoString implements fmt.GoStringer and never returns the token.
func (Token) GoString() string { return redactedToken }

// LogValue implements slog.LogValuer and never returns the token.
func (Token) LogValue() slog.Value { return slog.StringValue(redactedToken) }

// MarshalText implements encoding.TextMarshaler and never returns the token,
// so that a Token put in a JSON or text log by mistake stays redacted.
func (Token) MarshalText() ([]byte, error) { return []byte(redactedToken), nil }

// Reveal returns the token itself.
func (t Token) Reveal() string { return string(t) }

// MintToken makes a new caller token from random (crypto/rand.Reader if
// nil). It returns the token (show it once), its id (for listings and
// revocation) and the hex SHA-256 of the whole token (the only form stored).
func MintToken(random io.Reader) (tok Token, id string, hash string, err error) {
	if random == nil {
		random = rand.Reader
	}
	var buf [TokenIDLen + tokenSecretRaw]byte
	if _, err := io.ReadFull(random, buf[:]); err != nil {
		return "", "", "", fmt.Errorf("mint token: read random: %w", err)
	}
	idb := make([]byte, TokenIDLen)
	for i, b := range buf[:TokenIDLen] {
		idb[i] = idAlphabet[b&31] // 256 is a multiple of 32: uniform
	}
	id = string(idb)
	s := TokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(buf[TokenIDLen:])
	clear(buf[:])
	return Token(s), id, hashToken(s), nil
}

// hashToken returns the hex SHA-256 of the whole token string.
func hashToken(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// parseToken strictly checks a presented token and returns its id: the
// exact length, the prefix, the id alphabet, the separator, and a canonical
// base64url secret of 32 bytes.
func parseToken(s string) (id string, ok bool) {
	if len(s) != TokenLen || !strings.HasPrefix(s, TokenPrefix) {
		return "", false
	}
	id = s[len(TokenPrefix) : len(TokenPrefix)+TokenIDLen]
	if !ValidTokenID(id) || s[len(TokenPrefix)+TokenIDLen] != '_' {
		return "", false
	}
	secret := s[len(TokenPrefix)+TokenIDLen+1:]
	raw, err := base64.RawURLEncoding.Strict().DecodeString(secret)
	if err != nil || len(raw) != tokenSecretRaw {
		return "", false
	}
	return id, true
}

// ValidTokenID reports whether s is a token id: TokenIDLen characters of
// lowercase base32 (a-z, 2-7).
func ValidTokenID(s string) bool {
	if len(s) != TokenIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(idAlphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// LooksLikeToken reports whether s looks like a caller token rather than a
// token id (it contains the "brk_" prefix), so that a token pasted where an id
// belongs (token revoke, a note) can be refused instead of stored or echoed.
func LooksLikeToken(s string) bool {
	return strings.Contains(s, TokenPrefix)
}
