package vwserver

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// maxTokenLen bounds an access token before it is parsed.
const maxTokenLen = 8 << 10

// claims is the access token payload. The CLI reads sub, email and exp; the
// rest mirrors what Vaultwarden issues.
type claims struct {
	NotBefore     int64    `json:"nbf"`
	Expires       int64    `json:"exp"`
	Issuer        string   `json:"iss"`
	Subject       string   `json:"sub"`
	Premium       bool     `json:"premium"`
	Name          string   `json:"name"`
	Email         string   `json:"email"`
	EmailVerified bool     `json:"email_verified"`
	SecurityStamp string   `json:"sstamp"`
	Device        string   `json:"device"`
	ClientID      string   `json:"client_id"`
	Scope         []string `json:"scope"`
	AMR           []string `json:"amr"`
}

var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// errBadToken is the only error verifyJWT returns: the cause is not told to
// the client.
var errBadToken = errors.New("vwserver: invalid access token")

// signJWT returns an HS256 JWT over c.
func signJWT(key []byte, c claims) string {
	payload, err := json.Marshal(c)
	if err != nil {
		panic("vwserver: marshal claims: " + err.Error()) // impossible: plain struct
	}
	signed := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(payload)
	return signed + "." + base64.RawURLEncoding.EncodeToString(jwtMAC(key, signed))
}

func jwtMAC(key []byte, signed string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(signed))
	return m.Sum(nil)
}

// verifyJWT checks the signature in constant time, then the header and the
// validity window, and returns the claims.
func verifyJWT(key []byte, tok string, now time.Time) (claims, error) {
	var c claims
	if len(tok) > maxTokenLen {
		return c, errBadToken
	}
	head, rest, ok := strings.Cut(tok, ".")
	if !ok {
		return c, errBadToken
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(sig, ".") {
		return c, errBadToken
	}
	// Compare the encoded form, so that no second spelling of the same MAC
	// (non-canonical base64) is accepted.
	wantSig := base64.RawURLEncoding.EncodeToString(jwtMAC(key, head+"."+payload))
	if !hmac.Equal([]byte(sig), []byte(wantSig)) {
		return c, errBadToken
	}
	if head != jwtHeader {
		return c, errBadToken
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil || json.Unmarshal(raw, &c) != nil {
		return c, errBadToken
	}
	t := now.Unix()
	if c.Subject == "" || t >= c.Expires || t+60 < c.NotBefore {
		return c, errBadToken
	}
	return c, nil
}
