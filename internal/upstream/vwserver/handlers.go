package vwserver

import (
	"cmp"
	"crypto/subtle"
	"encoding/json"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Request bounds.
const (
	maxHeaderBytes = 64 << 10
	maxFormBytes   = 64 << 10 // token endpoint form
	maxJSONBytes   = 16 << 10 // JSON request bodies
)

// serverVersion is what /api/config reports.
const serverVersion = "2026.6.0"

// userKeyIDPattern is what the key-id backfill may store: the SDK sends 32
// hex digits; allow a UUID too.
var userKeyIDPattern = regexp.MustCompile(`^[0-9A-Fa-f-]{1,64}$`)

func (s *Server) routes() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("POST /identity/connect/token", s.handleToken)
	m.HandleFunc("POST /identity/accounts/prelogin/password", s.handlePrelogin)
	m.HandleFunc("POST /identity/accounts/prelogin", s.handlePrelogin)
	m.HandleFunc("GET /api/config", s.handleConfig)
	m.HandleFunc("GET /api/sync", s.authed(s.handleSync))
	m.HandleFunc("GET /api/accounts/revision-date", s.authed(s.handleRevisionDate))
	m.HandleFunc("POST /api/accounts/key-management/user-key-id", s.authed(s.handleUserKeyID))
	m.HandleFunc("GET /api/collections", s.authed(s.handleCollections))
	m.HandleFunc("GET /api/organizations/{orgID}/collections", s.authed(s.handleOrgCollections))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// Never 401/403 for an unknown path: the CLI logs out on those (P6).
		writeJSON(w, http.StatusNotFound, errorBody("not found"))
	})
	return m
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(b)
}

// errorBody is the error shape both the identity and the API clients read.
func errorBody(msg string) map[string]any {
	return map[string]any{
		"message":    msg,
		"object":     "error",
		"ErrorModel": map[string]any{"Message": msg, "Object": "error"},
	}
}

// ---- identity ----

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	if g := r.PostForm.Get("grant_type"); g != "client_credentials" {
		// The password and refresh-token grants are not implemented: the
		// broker logs in with API keys only.
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
		return
	}
	clientID, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	device := r.PostForm.Get("deviceIdentifier")

	s.mu.Lock()
	u := s.byClientID[clientID]
	want := "\x00" + strings.Repeat("x", clientSecretLen) // compared when the id is unknown, so both paths do the same work
	if u != nil {
		want = u.clientSecret
	}
	s.mu.Unlock()
	if subtle.ConstantTimeCompare([]byte(secret), []byte(want)) != 1 || u == nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_client"})
		return
	}

	s.mu.Lock()
	resp := s.tokenResponseLocked(u, clientID, device)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) tokenResponseLocked(u *user, clientID, device string) map[string]any {
	now := time.Now()
	lifetime := s.opts.TokenLifetime
	tok := signJWT(s.jwtKey, claims{
		NotBefore:     now.Unix(),
		Expires:       now.Add(lifetime).Unix(),
		Issuer:        s.URL() + "/identity",
		Subject:       u.id,
		Name:          u.name,
		Email:         u.email,
		EmailVerified: true,
		SecurityStamp: u.securityStamp,
		Device:        device,
		ClientID:      clientID,
		Scope:         []string{"api"},
		AMR:           []string{"Application"},
	})
	return map[string]any{
		"access_token":   tok,
		"token_type":     "Bearer",
		"expires_in":     int64(lifetime / time.Second),
		"scope":          "api",
		"Kdf":            0,
		"KdfIterations":  u.kdfIterations,
		"KdfMemory":      nil,
		"KdfParallelism": nil,
		"Key":            u.wrappedUserKey,
		"PrivateKey":     u.wrappedPrivKey,
		"AccountKeys":    accountKeys(u),
		"UserDecryptionOptions": map[string]any{
			"HasMasterPassword": true,
			"MasterPasswordUnlock": map[string]any{
				"Kdf":                       map[string]any{"KdfType": 0, "Iterations": u.kdfIterations, "Memory": nil, "Parallelism": nil},
				"MasterKeyEncryptedUserKey": u.wrappedUserKey,
				"MasterKeyWrappedUserKey":   u.wrappedUserKey,
				"Salt":                      u.salt,
			},
			"Object": "userDecryptionOptions",
		},
		"ForcePasswordReset":   false,
		"ResetMasterPassword":  false,
		"MasterPasswordPolicy": map[string]any{"Object": "masterPasswordPolicy"},
	}
}

// accountKeys is the V1 account key state. The inner names must be exactly
// camelCase (P3).
func accountKeys(u *user) map[string]any {
	return map[string]any{
		"publicKeyEncryptionKeyPair": map[string]any{
			"wrappedPrivateKey": u.wrappedPrivKey,
			"publicKey":         u.publicKeyB64,
			"signedPublicKey":   nil,
		},
		"signatureKeyPair": nil,
		"securityState":    nil,
		"object":           "privateKeys",
	}
}

func (s *Server) handlePrelogin(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Email string `json:"email"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	salt := strings.ToLower(strings.TrimSpace(req.Email))
	iter := s.opts.KDFIterations
	s.mu.Lock()
	for _, u := range s.users {
		if u.salt == salt {
			iter = u.kdfIterations
			break
		}
	}
	s.mu.Unlock()
	// An unknown email gets the defaults, so the answer is no oracle.
	writeJSON(w, http.StatusOK, map[string]any{
		"kdf": 0, "kdfIterations": iter, "kdfMemory": nil, "kdfParallelism": nil,
		"kdfSettings": map[string]any{"kdfType": 0, "iterations": iter, "memory": nil, "parallelism": nil},
		"salt":        salt,
	})
}

// readJSON decodes a bounded JSON body into v, answering 400 on failure.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxJSONBytes)
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody("malformed request body"))
		return false
	}
	return true
}

// ---- api ----

func (s *Server) handleConfig(w http.ResponseWriter, r *http.Request) {
	base := s.URL()
	writeJSON(w, http.StatusOK, map[string]any{
		"version": serverVersion,
		"gitHash": "",
		"server":  map[string]any{"name": "broker vwserver", "url": ""},
		"environment": map[string]any{
			"vault":    base,
			"api":      base + "/api",
			"identity": base + "/identity",
			"sso":      "",
		},
		"featureStates": map[string]any{},
		"object":        "config",
	})
}

// authed wraps an API handler with access-token verification. Only a bad or
// expired token gets 401.
func (s *Server) authed(h func(w http.ResponseWriter, r *http.Request, u *user)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		var c claims
		var err error
		if !ok {
			err = errBadToken
		} else {
			c, err = verifyJWT(s.jwtKey, strings.TrimSpace(tok), time.Now())
		}
		var u *user
		if err == nil {
			s.mu.Lock()
			u = s.users[c.Subject]
			if u != nil && u.securityStamp != c.SecurityStamp {
				u = nil
			}
			s.mu.Unlock()
		}
		if u == nil {
			s.logf("vwserver: %s %s: rejected access token", r.Method, r.URL.Path)
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token"})
			return
		}
		h(w, r, u)
	}
}

func (s *Server) handleRevisionDate(w http.ResponseWriter, r *http.Request, u *user) {
	s.mu.Lock()
	rev := s.revision
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, rev)
}

func (s *Server) handleUserKeyID(w http.ResponseWriter, r *http.Request, u *user) {
	var req struct {
		UserKeyID string `json:"userKeyId"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	if !userKeyIDPattern.MatchString(req.UserKeyID) {
		writeJSON(w, http.StatusBadRequest, errorBody("userKeyId must be hex digits"))
		return
	}
	s.mu.Lock()
	u.userKeyID = req.UserKeyID
	s.bumpLocked()
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleSync(w http.ResponseWriter, r *http.Request, u *user) {
	s.mu.Lock()
	resp := s.syncLocked(u)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleCollections(w http.ResponseWriter, r *http.Request, u *user) {
	s.mu.Lock()
	data := s.collectionsLocked(u, "")
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, listOf(data))
}

func (s *Server) handleOrgCollections(w http.ResponseWriter, r *http.Request, u *user) {
	orgID := r.PathValue("orgID")
	s.mu.Lock()
	o := s.orgs[orgID]
	var data []map[string]any
	if o != nil && o.members[u.id] != nil {
		data = s.collectionsLocked(u, orgID)
	}
	s.mu.Unlock()
	if data == nil {
		// 404, not 403, for an org the user is not in (P6).
		writeJSON(w, http.StatusNotFound, errorBody("organization not found"))
		return
	}
	writeJSON(w, http.StatusOK, listOf(data))
}

func listOf(data []map[string]any) map[string]any {
	return map[string]any{"object": "list", "data": data, "continuationToken": nil}
}

// memberOrgsLocked returns the user's organizations, sorted by id.
func (s *Server) memberOrgsLocked(u *user) []*org {
	var out []*org
	for _, o := range s.orgs {
		if o.members[u.id] != nil {
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(a, b *org) int { return strings.Compare(a.id, b.id) })
	return out
}

// collectionsLocked returns the collections the user can see (all of every
// org they belong to), limited to orgID when it is not empty. It never
// returns nil.
func (s *Server) collectionsLocked(u *user, orgID string) []map[string]any {
	data := []map[string]any{}
	for _, c := range s.sortedCollectionsLocked() {
		o := s.orgs[c.orgID]
		m := o.members[u.id]
		if m == nil || (orgID != "" && c.orgID != orgID) {
			continue
		}
		manager := m.typ <= MemberAdmin
		data = append(data, map[string]any{
			"object": "collectionDetails", "id": c.id, "organizationId": c.orgID,
			"name": c.name, "externalId": nil, "type": 0,
			"readOnly": !manager, "hidePasswords": false, "manage": manager,
		})
	}
	return data
}

func (s *Server) sortedCollectionsLocked() []*collection {
	out := make([]*collection, 0, len(s.collections))
	for _, c := range s.collections {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *collection) int { return strings.Compare(a.id, b.id) })
	return out
}

func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z") }

func (s *Server) syncLocked(u *user) map[string]any {
	orgs := []map[string]any{}
	for _, o := range s.memberOrgsLocked(u) {
		m := o.members[u.id]
		orgs = append(orgs, map[string]any{
			"object": "profileOrganization", "id": o.id, "name": o.name,
			"key": m.wrapped, "status": 2, "type": m.typ, "enabled": true,
			"organizationUserId": m.id, "userId": u.id,
			"permissions": map[string]bool{
				"accessEventLogs": false, "accessImportExport": false, "accessReports": false,
				"createNewCollections": false, "editAnyCollection": false, "deleteAnyCollection": false,
				"manageGroups": false, "managePolicies": false, "manageSso": false, "manageUsers": false,
				"manageResetPassword": false, "manageScim": false,
			},
			"useEvents": false, "usePolicies": false, "useTotp": true, "useGroups": false,
			"useDirectory": false, "useSso": false, "useApi": true, "selfHost": true,
			"usersGetPremium": true, "useSecretsManager": false, "usePasswordManager": true,
			"productTierType": 3, "seats": nil, "maxCollections": nil, "maxStorageGb": nil,
			"hasPublicAndPrivateKeys": false, "resetPasswordEnrolled": false,
			"accessSecretsManager": false, "familySponsorshipAvailable": false,
		})
	}

	var items []*item
	for _, it := range s.items {
		if m := s.orgs[it.orgID].members[u.id]; m != nil {
			items = append(items, it)
		}
	}
	slices.SortFunc(items, func(a, b *item) int {
		return cmp.Or(a.created.Compare(b.created), strings.Compare(a.id, b.id))
	})
	ciphers := []map[string]any{}
	for _, it := range items {
		ciphers = append(ciphers, cipherJSON(it, s.orgs[it.orgID].members[u.id].typ <= MemberAdmin))
	}

	dec := map[string]any{
		"masterPasswordUnlock": map[string]any{
			"kdf":                       map[string]any{"kdfType": 0, "iterations": u.kdfIterations, "memory": nil, "parallelism": nil},
			"masterKeyEncryptedUserKey": u.wrappedUserKey,
			"masterKeyWrappedUserKey":   u.wrappedUserKey,
			"salt":                      u.salt,
		},
	}
	if u.userKeyID != "" {
		dec["userKeyId"] = u.userKeyID // echoed, else the client backfills on every unlock (P2)
	}
	return map[string]any{
		"object": "sync",
		"profile": map[string]any{
			"object": "profile", "id": u.id, "email": u.email, "name": u.name,
			"emailVerified": true, "premium": false, "premiumFromOrganization": false,
			"culture": "en-US", "twoFactorEnabled": false,
			"securityStamp": u.securityStamp,
			"key":           u.wrappedUserKey, "privateKey": u.wrappedPrivKey,
			"accountKeys":  accountKeys(u),
			"creationDate": isoTime(u.created), "forcePasswordReset": false,
			"usesKeyConnector": false, "verifyDevices": false,
			"avatarColor":   nil,
			"organizations": orgs, "providers": []any{}, "providerOrganizations": []any{},
		},
		"collections":    s.collectionsLocked(u, ""),
		"ciphers":        ciphers,
		"folders":        []any{},
		"sends":          []any{},
		"policies":       []any{},
		"domains":        nil,
		"userDecryption": dec,
	}
}

func cipherJSON(it *item, manager bool) map[string]any {
	c := map[string]any{
		"object": "cipherDetails", "id": it.id, "type": it.typ,
		"organizationId": it.orgID, "collectionIds": it.collectionIDs,
		"folderId": nil, "name": it.name, "notes": it.notes, "fields": []any{},
		"login": nil, "secureNote": nil, "card": nil, "identity": nil, "sshKey": nil,
		"key": nil, "creationDate": isoTime(it.created), "revisionDate": isoTime(it.revised),
		"deletedDate": nil, "archivedDate": nil, "reprompt": 0, "favorite": false,
		"edit": manager, "viewPassword": true,
		"permissions":         map[string]bool{"delete": manager, "restore": manager},
		"organizationUseTotp": true, "attachments": nil, "passwordHistory": []any{},
	}
	switch it.typ {
	case cipherLogin:
		c["login"] = map[string]any{
			"username": it.username, "password": it.password, "totp": nil,
			"uris": []any{}, "passwordRevisionDate": nil, "fido2Credentials": []any{},
		}
	case cipherNote:
		c["secureNote"] = map[string]any{"type": 0}
	case cipherCard:
		c["card"] = it.card
	}
	return c
}
