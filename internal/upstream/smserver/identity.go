package smserver

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"
)

// routes registers every handler on the mux (Go 1.22+ patterns).
func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc("POST /identity/connect/token", s.handleToken)
	m.HandleFunc("GET /api/organizations/{org}/secrets", s.api(s.handleListSecrets))
	m.HandleFunc("POST /api/organizations/{org}/secrets", s.api(s.handleCreateSecret))
	m.HandleFunc("GET /api/organizations/{org}/secrets/sync", s.api(s.handleSync))
	m.HandleFunc("GET /api/organizations/{org}/projects", s.api(s.handleListProjects))
	m.HandleFunc("GET /api/projects/{id}", s.api(s.handleGetProject))
	m.HandleFunc("POST /api/secrets/get-by-ids", s.api(s.handleGetByIDs))
	m.HandleFunc("POST /api/secrets/delete", s.api(s.handleDeleteSecrets))
	m.HandleFunc("GET /api/secrets/{id}", s.api(s.handleGetSecret))
	m.HandleFunc("PUT /api/secrets/{id}", s.api(s.handleUpdateSecret))
	s.mux = m
}

// tokenResponse is the "payload" shape of the identity answer, exactly the
// five fields the SDK requires (no user-login fields: they would make the
// SDK take it for a user login and store nothing).
type tokenResponse struct {
	AccessToken      string `json:"access_token"`
	ExpiresIn        int64  `json:"expires_in"`
	TokenType        string `json:"token_type"`
	Scope            string `json:"scope"`
	EncryptedPayload string `json:"encrypted_payload"`
}

// identityError answers an IdentityServer-style error: 400 {"error":code}.
func identityError(w http.ResponseWriter, code string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": code})
}

// handleToken is the client_credentials login of an access token.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		identityError(w, "invalid_request")
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		identityError(w, "unsupported_grant_type")
		return
	}
	if r.PostForm.Get("scope") != accessTokenScope {
		identityError(w, "invalid_scope")
		return
	}
	clientID := strings.ToLower(r.PostForm.Get("client_id"))
	given := sha256.Sum256([]byte(r.PostForm.Get("client_secret")))

	resp, ok := s.issueToken(clientID, given)
	if !ok {
		identityError(w, "invalid_client")
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// issueToken checks the client credentials (the secret's hash in constant
// time) and returns the login answer.
func (s *Server) issueToken(clientID string, given [sha256.Size]byte) (tokenResponse, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[clientID]
	var want [sha256.Size]byte
	if ok {
		want = t.secretHash
	}
	match := subtle.ConstantTimeCompare(given[:], want[:]) == 1
	if !ok || !match || t.revoked {
		return tokenResponse{}, false
	}
	a, ok := s.accounts[t.accountID]
	if !ok {
		return tokenResponse{}, false
	}
	now := time.Now()
	jwt := s.signJWT(claims{
		Nbf:          now.Unix(),
		Exp:          now.Add(s.opts.TokenLifetime).Unix(),
		Iat:          now.Unix(),
		Iss:          "smserver",
		ClientID:     t.id,
		Sub:          a.id,
		Type:         "ServiceAccount",
		Organization: a.orgID,
		Jti:          newUUID(),
		Scope:        []string{accessTokenScope},
	})
	return tokenResponse{
		AccessToken:      jwt,
		ExpiresIn:        int64(s.opts.TokenLifetime / time.Second),
		TokenType:        "Bearer",
		Scope:            accessTokenScope,
		EncryptedPayload: t.payload,
	}, true
}

// claims are the JWT claims. The SDK needs exp, sub, scope (an array) and
// organization; client_id carries the access token id, so that revoking
// the token refuses its live JWTs too.
type claims struct {
	Nbf          int64    `json:"nbf"`
	Exp          int64    `json:"exp"`
	Iat          int64    `json:"iat"`
	Iss          string   `json:"iss"`
	ClientID     string   `json:"client_id"`
	Sub          string   `json:"sub"`
	Type         string   `json:"type"`
	Organization string   `json:"organization"`
	Jti          string   `json:"jti"`
	Scope        []string `json:"scope"`
}

// jwtHeader is the fixed JOSE header, base64url without padding.
var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// signJWT returns header.claims.signature, each part base64url without
// padding, signed with HMAC-SHA256 under the server's random key.
func (s *Server) signJWT(c claims) string {
	body, err := json.Marshal(c)
	if err != nil {
		panic("smserver: " + err.Error()) // impossible: plain struct
	}
	signed := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(body)
	return signed + "." + base64.RawURLEncoding.EncodeToString(s.jwtMAC(signed))
}

func (s *Server) jwtMAC(signed string) []byte {
	m := hmac.New(sha256.New, s.jwtKey)
	m.Write([]byte(signed))
	return m.Sum(nil)
}

// Errors of verifyJWT (never shown to clients, who get a bare 401).
var (
	errJWTMalformed = errors.New("smserver: malformed jwt")
	errJWTSignature = errors.New("smserver: bad jwt signature")
	errJWTExpired   = errors.New("smserver: expired jwt")
)

// verifyJWT checks the signature (in constant time) and the time window of
// a JWT and returns its claims.
func (s *Server) verifyJWT(tok string, now time.Time) (claims, error) {
	var c claims
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || parts[0] != jwtHeader {
		return c, errJWTMalformed
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(parts[2])
	if err != nil {
		return c, errJWTMalformed
	}
	if !hmac.Equal(sig, s.jwtMAC(parts[0]+"."+parts[1])) {
		return c, errJWTSignature
	}
	body, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
	if err != nil {
		return c, errJWTMalformed
	}
	if err := json.Unmarshal(body, &c); err != nil {
		return c, errJWTMalformed
	}
	if now.Unix() >= c.Exp || now.Unix() < c.Nbf {
		return c, errJWTExpired
	}
	return c, nil
}

// authLocked returns the machine account behind the request's bearer JWT,
// or nil when the JWT is missing, forged, expired, or its access token was
// revoked. s.mu must be held.
func (s *Server) authLocked(r *http.Request) *account {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return nil
	}
	c, err := s.verifyJWT(tok, time.Now())
	if err != nil {
		return nil
	}
	t, ok := s.tokens[c.ClientID]
	if !ok || t.revoked || t.accountID != c.Sub {
		return nil
	}
	a, ok := s.accounts[c.Sub]
	if !ok || a.orgID != c.Organization {
		return nil
	}
	return a
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(body)
}
