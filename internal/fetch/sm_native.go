package fetch

// This file is the pure-Go Secrets Manager client: a second implementation
// of smClient next to the cgo SDK adapter (sm_sdk.go), for builds without cgo
// (FreeBSD, static binaries) and as a cross-check of the SDK. It speaks the
// protocol recorded in /work/shared/protocols/secrets-manager.md: the access
// token format, the key derivation, the client_credentials login with its
// encrypted payload, the JWT, type-2 EncStrings and the API endpoints.
//
// What differs from the SDK, on purpose:
//   - Errors are typed (*smHTTPError and the errNative* sentinels) and carry
//     no response body, JWT or value; the HTTP status and a Retry-After
//     header survive, so the backend honours Retry-After.
//   - Redirects are never followed (a redirected login would carry the client
//     secret elsewhere); a 3xx answer is an error.
//   - Every response read is bounded (nativeMaxResponse); every request has a
//     timeout (nativeRequestTimeout), so a call abandoned by its caller ends.
//   - net/http replays an idempotent GET once, by itself, when a reused
//     keep-alive connection turns out dead before any answer byte; that
//     replay is not counted by the backend's limiter. Every other failure
//     reaches the backend, which retries under its own rules.
//   - Proxies come from HTTP_PROXY / HTTPS_PROXY / NO_PROXY as in net/http:
//     loopback hosts are never proxied (reqwest, under the SDK, proxies them).
//   - Decrypted plaintext lives only in buffers made for one call, which are
//     cleared as soon as the string is made; the client keeps no plaintext.
//
// The state file has the SDK's format (a type-2 EncString under the access
// token key of {"version":1,"token":JWT,"encryption_key":b64}), so a tenant
// can switch between the two clients without a new login.

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hostd/broker/internal/bwcrypto"
)

const (
	// nativeMaxResponse bounds an API response body: a larger one is refused
	// (malformed). 16 MiB holds tens of thousands of secrets.
	nativeMaxResponse = 16 << 20
	// nativeMaxIdentityResponse bounds a login response body.
	nativeMaxIdentityResponse = 1 << 20
	// nativeMaxErrorDrain is how much of an error body is read (and dropped)
	// so that the connection can be reused.
	nativeMaxErrorDrain = 64 << 10
	// nativeMaxStateFile bounds the state file read at login.
	nativeMaxStateFile = 64 << 10

	// nativeRenewMargin: like the SDK, log in again before an API call when
	// the JWT expires within this margin.
	nativeRenewMargin = 5 * time.Minute
	// nativeRequestTimeout bounds one HTTP exchange, body included. The
	// backend's callers wait on their own deadline; this only ends a call
	// they abandoned.
	nativeRequestTimeout = 60 * time.Second
	nativeDialTimeout    = 10 * time.Second
	nativeTLSTimeout     = 10 * time.Second
	nativeHeaderTimeout  = 30 * time.Second

	// nativeDeviceType is the SDK's Device-Type header (DeviceType::SDK).
	nativeDeviceType = "21"
	// nativeUserAgent names this client honestly; the upstream does not
	// require the SDK's.
	nativeUserAgent = "hostd-broker (native Secrets Manager client)"

	nativeStateVersion = 1
	nativeScope        = "api.secrets"

	// Limits the SDK enforces on Create/Update (in characters).
	nativeMaxNoteChars = 7000
)

// smHTTPError is an upstream answer with a status outside 2xx. It holds no
// part of the body: only the status, a Retry-After header (0 when absent or
// invalid, capped at smMaxRetryAfter) and, for a login refusal, a known OAuth
// error code such as "invalid_client".
type smHTTPError struct {
	Status     int
	RetryAfter time.Duration
	OAuthError string
}

func (e *smHTTPError) Error() string {
	if e.OAuthError != "" {
		return fmt.Sprintf("secrets manager: upstream answered %d %s", e.Status, e.OAuthError)
	}
	return fmt.Sprintf("secrets manager: upstream answered %d", e.Status)
}

// Sentinel errors of the native client. classifySDKError maps each to the
// same category as the SDK's text for the same situation.
var (
	errNativeMAC           = errors.New("secrets manager: mac mismatch")
	errNativeDecrypt       = errors.New("secrets manager: decryption failed")
	errNativeMalformed     = errors.New("secrets manager: malformed response")
	errNativeIdentityShape = errors.New("secrets manager: unexpected identity response shape")
	errNativeLoginRefused  = errors.New("secrets manager: identity refused the login")
	errNativeConn          = errors.New("secrets manager: connection failed")
	errNativeBadToken      = errors.New("secrets manager: access token format")
	errNativeInput         = errors.New("secrets manager: input outside the limits")
	errNativeNotLoggedIn   = errors.New("secrets manager: not logged in")
)

// knownOAuthErrors are the OAuth error codes an identity refusal may name;
// any other text in the body is dropped.
var knownOAuthErrors = map[string]bool{
	"invalid_client": true, "invalid_grant": true, "unauthorized_client": true,
	"invalid_request": true, "invalid_scope": true, "unsupported_grant_type": true,
}

// smNewNativeClient creates a pure-Go client. Both URLs must be set (NewSM
// checks them).
func smNewNativeClient(apiURL, identityURL string) (smClient, error) {
	if apiURL == "" || identityURL == "" {
		return nil, errors.New("secrets manager: native client needs both urls")
	}
	return &nativeClient{
		apiURL:      strings.TrimRight(apiURL, "/"),
		identityURL: strings.TrimRight(identityURL, "/"),
		hc: &http.Client{
			Transport: nativeTransport(),
			Timeout:   nativeRequestTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
		now: time.Now,
	}, nil
}

// nativeTransport is shared by every native client: one connection pool to
// the upstream. TLS uses the system roots.
var nativeTransport = sync.OnceValue(func() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: nativeDialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   nativeTLSTimeout,
		ResponseHeaderTimeout: nativeHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
	}
})

// nativeClient implements smClient over net/http. The backend serializes
// calls on one client; mu makes that an invariant rather than an assumption.
type nativeClient struct {
	mu                  sync.Mutex
	apiURL, identityURL string
	hc                  *http.Client
	now                 func() time.Time

	// Set by Login; cleared by Close.
	clientID     string
	clientSecret []byte
	atKey        *bwcrypto.Key // the access-token key (state file)
	stateFile    string

	jwt       string
	expiresOn time.Time
	orgKey    *bwcrypto.Key
}

// nativeToken is a parsed access token.
type nativeToken struct {
	id     string // lowercase
	secret []byte
	key16  []byte
}

// parseNativeToken parses 0.<id>.<secret>:<b64 key16>. The checks are
// parseAccessToken's; the error never holds any part of the token.
func parseNativeToken(tok string) (nativeToken, error) {
	if _, reason := parseAccessToken(tok); reason != "" {
		return nativeToken{}, fmt.Errorf("%w: %s", errNativeBadToken, reason)
	}
	left, key, _ := strings.Cut(tok, ":")
	parts := strings.Split(left, ".")
	enc := base64.StdEncoding
	if len(key)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	key16, err := enc.Strict().DecodeString(key)
	if err != nil || len(key16) != 16 {
		return nativeToken{}, errNativeBadToken
	}
	return nativeToken{id: strings.ToLower(parts[1]), secret: []byte(parts[2]), key16: key16}, nil
}

// Login parses the token, derives its key and either restores a valid
// session from stateFile (no request) or logs in at the identity endpoint,
// decrypts the organization key from the encrypted payload and writes the
// state file. A corrupt or expired state file is ignored; a failure to
// write it is ignored too (as the SDK does).
func (c *nativeClient) Login(accessToken, stateFile string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	tok, err := parseNativeToken(accessToken)
	if err != nil {
		return err
	}
	defer clear(tok.key16)
	atKey, err := bwcrypto.AccessTokenKey(tok.key16)
	if err != nil {
		return errNativeBadToken
	}
	c.wipe()
	c.clientID, c.clientSecret, c.atKey, c.stateFile = tok.id, tok.secret, atKey, stateFile

	if stateFile != "" {
		if jwt, exp, orgKey, ok := c.readState(); ok {
			c.jwt, c.expiresOn, c.orgKey = jwt, exp, orgKey
			return nil
		}
	}
	lr, err := c.identityLogin()
	if err != nil {
		return err
	}
	orgKey, err := decryptPayload(atKey, lr.payload)
	if err != nil {
		return err
	}
	c.jwt, c.expiresOn, c.orgKey = lr.jwt, lr.expiresOn, orgKey
	c.writeState()
	return nil
}

// wipe forgets the session and clears the key material it can reach.
func (c *nativeClient) wipe() {
	clear(c.clientSecret)
	for _, k := range []*bwcrypto.Key{c.atKey, c.orgKey} {
		if k != nil {
			clear(k.Enc[:])
			clear(k.Mac[:])
		}
	}
	c.clientID, c.clientSecret, c.atKey, c.orgKey, c.jwt, c.expiresOn = "", nil, nil, nil, "", time.Time{}
}

// Close forgets the session. The shared transport stays.
func (c *nativeClient) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wipe()
}

// loginResult is a parsed, checked identity answer.
type loginResult struct {
	jwt       string
	expiresOn time.Time
	payload   string
}

// identityLogin posts the client_credentials form and checks the answer's
// shape and its JWT.
func (c *nativeClient) identityLogin() (loginResult, error) {
	body := make([]byte, 0, 128+len(c.clientSecret))
	body = append(body, "scope="+nativeScope+"&client_id="...)
	body = append(body, url.QueryEscape(c.clientID)...)
	body = append(body, "&client_secret="...)
	body = appendQueryEscaped(body, c.clientSecret)
	body = append(body, "&grant_type=client_credentials"...)
	rb := &wipingBody{buf: body}
	req, err := http.NewRequest(http.MethodPost, c.identityURL+"/connect/token", rb)
	if err != nil {
		rb.Close()
		return loginResult{}, errNativeMalformed
	}
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Device-Type", nativeDeviceType)
	req.Header.Set("User-Agent", nativeUserAgent)
	resp, err := c.hc.Do(req)
	if err != nil {
		rb.Close()
		return loginResult{}, errNativeConn
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return loginResult{}, identityError(resp)
	}
	raw, err := readBounded(resp.Body, nativeMaxIdentityResponse)
	if err != nil {
		return loginResult{}, err
	}
	var r struct {
		AccessToken      *string `json:"access_token"`
		ExpiresIn        *uint64 `json:"expires_in"`
		TokenType        *string `json:"token_type"`
		Scope            *string `json:"scope"`
		EncryptedPayload *string `json:"encrypted_payload"`
	}
	if err := json.Unmarshal(raw, &r); err != nil ||
		r.AccessToken == nil || r.ExpiresIn == nil || r.TokenType == nil || r.Scope == nil || r.EncryptedPayload == nil {
		return loginResult{}, errNativeIdentityShape
	}
	if _, err := parseJWT(*r.AccessToken); err != nil {
		return loginResult{}, err
	}
	if *r.ExpiresIn > uint64(100*365*24*time.Hour/time.Second) {
		return loginResult{}, errNativeMalformed
	}
	return loginResult{
		jwt:       *r.AccessToken,
		expiresOn: c.now().Add(time.Duration(*r.ExpiresIn) * time.Second),
		payload:   *r.EncryptedPayload,
	}, nil
}

// identityError turns a refused login into a typed error. Only a known
// OAuth error code is kept from the body; an IdentityServer error model
// (error_description / ErrorModel) with 400 or 401 is a refused login.
func identityError(resp *http.Response) error {
	he := &smHTTPError{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	raw, err := readBounded(resp.Body, nativeMaxErrorDrain)
	if err != nil {
		return he
	}
	var e struct {
		Error       string          `json:"error"`
		Description *string         `json:"error_description"`
		Model       json.RawMessage `json:"ErrorModel"`
	}
	if json.Unmarshal(raw, &e) != nil {
		return he
	}
	if knownOAuthErrors[e.Error] {
		he.OAuthError = e.Error
	}
	if (he.Status == 400 || he.Status == 401) && len(e.Model) > 0 && string(e.Model) != "null" {
		return errNativeLoginRefused
	}
	return he
}

// decryptPayload decrypts the login payload {"encryptionKey": b64(64 bytes)}
// under the access-token key.
func decryptPayload(atKey *bwcrypto.Key, payload string) (*bwcrypto.Key, error) {
	pt, err := decryptBytes(atKey, payload)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	var p struct {
		EncryptionKey []byte `json:"encryptionKey"` // standard base64, padded
	}
	if err := json.Unmarshal(pt, &p); err != nil || p.EncryptionKey == nil {
		clear(p.EncryptionKey)
		return nil, errNativeMalformed
	}
	defer clear(p.EncryptionKey)
	k, err := bwcrypto.KeyFromBytes(p.EncryptionKey)
	if err != nil {
		return nil, errNativeDecrypt
	}
	return k, nil
}

// jwtClaims are the claims the SDK requires.
type jwtClaims struct {
	Exp          *uint64   `json:"exp"`
	Sub          *string   `json:"sub"`
	Scope        *[]string `json:"scope"`
	Organization *string   `json:"organization"`
}

// parseJWT checks a JWT as the SDK does (never its signature): three parts,
// the middle one base64url without padding, with exp, sub, scope (an array)
// and organization (a UUID). It returns the expiry.
func parseJWT(tok string) (time.Time, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, errNativeMalformed
	}
	body, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
	if err != nil {
		return time.Time{}, errNativeMalformed
	}
	var c jwtClaims
	if err := json.Unmarshal(body, &c); err != nil || c.Exp == nil || c.Sub == nil || c.Scope == nil ||
		c.Organization == nil || !isUUID(*c.Organization) || *c.Exp > 1<<40 {
		return time.Time{}, errNativeMalformed
	}
	return time.Unix(int64(*c.Exp), 0), nil
}

// ---- state file ----

// readState restores a session from the state file when it decrypts under
// the access-token key and its JWT has not expired.
func (c *nativeClient) readState() (jwt string, exp time.Time, orgKey *bwcrypto.Key, ok bool) {
	fi, err := os.Lstat(c.stateFile)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 || fi.Size() > nativeMaxStateFile {
		return "", time.Time{}, nil, false
	}
	f, err := os.Open(c.stateFile)
	if err != nil {
		return "", time.Time{}, nil, false
	}
	raw, err := io.ReadAll(io.LimitReader(f, nativeMaxStateFile+1))
	f.Close()
	if err != nil || len(raw) > nativeMaxStateFile {
		return "", time.Time{}, nil, false
	}
	pt, err := decryptBytes(c.atKey, strings.TrimSpace(string(raw)))
	if err != nil {
		return "", time.Time{}, nil, false
	}
	defer clear(pt)
	return parseState(pt, c.now())
}

// parseState reads the decrypted state {"version":1,"token":JWT,
// "encryption_key":b64(64 bytes)}; ok is false unless every part is valid
// and the JWT has not expired at now.
func parseState(pt []byte, now time.Time) (jwt string, exp time.Time, orgKey *bwcrypto.Key, ok bool) {
	var st struct {
		Version       int    `json:"version"`
		Token         string `json:"token"`
		EncryptionKey []byte `json:"encryption_key"`
	}
	err := json.Unmarshal(pt, &st)
	defer clear(st.EncryptionKey)
	if err != nil || st.Version != nativeStateVersion {
		return "", time.Time{}, nil, false
	}
	exp, err = parseJWT(st.Token)
	if err != nil || !now.Before(exp) {
		return "", time.Time{}, nil, false
	}
	k, err := bwcrypto.KeyFromBytes(st.EncryptionKey)
	if err != nil {
		return "", time.Time{}, nil, false
	}
	return st.Token, exp, k, true
}

// writeState writes the session to the state file atomically (a 0600 temp
// file in the same directory, fsync, rename). Failures are ignored: the
// login stands, it is just not kept.
func (c *nativeClient) writeState() {
	if c.stateFile == "" || c.orgKey == nil {
		return
	}
	kb := c.orgKey.Bytes()
	defer clear(kb)
	b64 := make([]byte, base64.StdEncoding.EncodedLen(len(kb)))
	base64.StdEncoding.Encode(b64, kb)
	defer clear(b64)
	jwtJSON, _ := json.Marshal(c.jwt)
	pt := make([]byte, 0, 64+len(jwtJSON)+len(b64))
	pt = append(pt, `{"version":`...)
	pt = strconv.AppendInt(pt, nativeStateVersion, 10)
	pt = append(pt, `,"token":`...)
	pt = append(pt, jwtJSON...)
	pt = append(pt, `,"encryption_key":"`...)
	pt = append(pt, b64...)
	pt = append(pt, `"}`...)
	content := bwcrypto.Encrypt(c.atKey, pt)
	clear(pt)
	writeFileAtomic(c.stateFile, []byte(content))
}

// writeFileAtomic writes data to path through a 0600 temp file in the same
// directory, fsynced and renamed over path.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".sm-state-*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// ---- API calls ----

// renewIfDue logs in again when the JWT expires within nativeRenewMargin
// (the SDK's rule). It keeps the organization key: the payload is not
// decrypted again.
func (c *nativeClient) renewIfDue() error {
	if c.jwt == "" || c.orgKey == nil {
		return errNativeNotLoggedIn
	}
	if c.now().Before(c.expiresOn.Add(-nativeRenewMargin)) {
		return nil
	}
	lr, err := c.identityLogin()
	if err != nil {
		return err
	}
	c.jwt, c.expiresOn = lr.jwt, lr.expiresOn
	c.writeState()
	return nil
}

// api sends one API request and decodes a 2xx JSON answer into out. body,
// when not nil, is sent as JSON and cleared once the transport is done
// with it.
func (c *nativeClient) api(method, path string, query url.Values, body []byte, out any) error {
	if err := c.renewIfDue(); err != nil {
		return err
	}
	u := c.apiURL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rb io.ReadCloser = http.NoBody
	if body != nil {
		rb = &wipingBody{buf: body}
	}
	req, err := http.NewRequest(method, u, rb)
	if err != nil {
		rb.Close()
		return errNativeMalformed
	}
	if body != nil {
		req.ContentLength = int64(len(body))
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.jwt)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Device-Type", nativeDeviceType)
	req.Header.Set("User-Agent", nativeUserAgent)
	resp, err := c.hc.Do(req)
	if err != nil {
		rb.Close()
		return errNativeConn
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, nativeMaxErrorDrain))
		return &smHTTPError{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), c.now())}
	}
	raw, err := readBounded(resp.Body, nativeMaxResponse)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return errNativeMalformed
	}
	return nil
}

// readBounded reads all of r up to max bytes: more is malformed, a read
// error (a body cut short, a reset) is a connection failure.
func readBounded(r io.Reader, max int64) ([]byte, error) {
	raw, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, errNativeConn
	}
	if int64(len(raw)) > max {
		return nil, errNativeMalformed
	}
	return raw, nil
}

// parseRetryAfter reads a Retry-After header: delay seconds or an HTTP
// date. It returns 0 when absent or invalid, at most smMaxRetryAfter, and
// at least 1ms when present (so that "0" still counts as given).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return 0
	}
	switch {
	case d > smMaxRetryAfter:
		return smMaxRetryAfter
	case d <= 0: // "0" or a date in the past: retry now
		return time.Millisecond
	}
	return d
}

// wipingBody is a request body that clears its buffer when the transport
// closes it (which may happen after Do returns).
type wipingBody struct {
	mu  sync.Mutex
	buf []byte
	off int
}

func (b *wipingBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.off >= len(b.buf) {
		return 0, io.EOF
	}
	n := copy(p, b.buf[b.off:])
	b.off += n
	return n, nil
}

func (b *wipingBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.buf)
	b.off = len(b.buf)
	return nil
}

// appendQueryEscaped appends the form encoding of s to dst without making
// an intermediate string of it.
func appendQueryEscaped(dst, s []byte) []byte {
	const hexDigits = "0123456789ABCDEF"
	for _, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			dst = append(dst, c)
		case c == ' ':
			dst = append(dst, '+')
		default:
			dst = append(dst, '%', hexDigits[c>>4], hexDigits[c&15])
		}
	}
	return dst
}

// ---- decoding ----

// decryptBytes decrypts a type-2 EncString into a fresh buffer that the
// caller clears. A type-0 EncString (no MAC) is refused as the SDK refuses
// it with a 64-byte key.
func decryptBytes(k *bwcrypto.Key, enc string) ([]byte, error) {
	if strings.HasPrefix(enc, "0.") {
		return nil, errNativeMAC
	}
	pt, err := bwcrypto.Decrypt(k, enc)
	switch {
	case errors.Is(err, bwcrypto.ErrMAC):
		return nil, errNativeMAC
	case err != nil:
		return nil, errNativeDecrypt
	}
	return pt, nil
}

// decryptText decrypts a UTF-8 EncString. The plaintext buffer is cleared
// once the string is made.
func decryptText(k *bwcrypto.Key, enc string) (string, error) {
	pt, err := decryptBytes(k, enc)
	if err != nil {
		return "", err
	}
	defer clear(pt)
	if !utf8.Valid(pt) {
		return "", errNativeDecrypt
	}
	return string(pt), nil
}

// normUUID returns s as a lowercase hyphenated UUID.
func normUUID(s string) (string, bool) {
	if !isUUID(s) {
		return "", false
	}
	s = strings.ToLower(s)
	if len(s) == 32 {
		s = s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
	}
	return s, true
}

// nativeSecretModel is a Secret of the API; nil means missing (or null).
type nativeSecretModel struct {
	ID             *string `json:"id"`
	OrganizationID *string `json:"organizationId"`
	Key            *string `json:"key"`
	Value          *string `json:"value"`
	Note           *string `json:"note"`
	CreationDate   *string `json:"creationDate"`
	RevisionDate   *string `json:"revisionDate"`
	Projects       []struct {
		ID *string `json:"id"`
	} `json:"projects"`
}

// secret checks the required fields and decrypts key, value and note.
func (c *nativeClient) secret(m *nativeSecretModel) (smSecret, error) {
	if m.ID == nil || m.OrganizationID == nil || m.Key == nil || m.Value == nil || m.Note == nil ||
		m.CreationDate == nil || m.RevisionDate == nil {
		return smSecret{}, errNativeMalformed
	}
	id, ok1 := normUUID(*m.ID)
	org, ok2 := normUUID(*m.OrganizationID)
	if !ok1 || !ok2 || !validDate(*m.CreationDate) || !validDate(*m.RevisionDate) {
		return smSecret{}, errNativeMalformed
	}
	out := smSecret{ID: id, OrganizationID: org}
	if len(m.Projects) > 0 && m.Projects[0].ID != nil {
		p, ok := normUUID(*m.Projects[0].ID)
		if !ok {
			return smSecret{}, errNativeMalformed
		}
		out.ProjectID = p
	}
	var err error
	if out.Key, err = decryptText(c.orgKey, *m.Key); err != nil {
		return smSecret{}, err
	}
	if out.Value, err = decryptText(c.orgKey, *m.Value); err != nil {
		return smSecret{}, err
	}
	if out.Note, err = decryptText(c.orgKey, *m.Note); err != nil {
		return smSecret{}, err
	}
	return out, nil
}

func (c *nativeClient) secrets(ms []nativeSecretModel) ([]smSecret, error) {
	out := make([]smSecret, 0, len(ms))
	for i := range ms {
		s, err := c.secret(&ms[i])
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// validDate reports whether s is RFC 3339 with an offset (what chrono needs).
func validDate(s string) bool {
	_, err := time.Parse(time.RFC3339Nano, s)
	return err == nil
}

// formatSyncDate formats t as chrono's to_rfc3339 does for UTC.
func formatSyncDate(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.999999999") + "+00:00"
}

func pathID(id string) string { return url.PathEscape(strings.ToLower(id)) }

// Sync implements smClient.
func (c *nativeClient) Sync(orgID string, lastSynced *time.Time) (bool, []smSecret, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var q url.Values
	if lastSynced != nil {
		q = url.Values{"lastSyncedDate": {formatSyncDate(*lastSynced)}}
	}
	var r struct {
		HasChanges *bool `json:"hasChanges"`
		Secrets    *struct {
			Data []nativeSecretModel `json:"data"`
		} `json:"secrets"`
	}
	if err := c.api(http.MethodGet, "/organizations/"+pathID(orgID)+"/secrets/sync", q, nil, &r); err != nil {
		return false, nil, err
	}
	if r.HasChanges == nil {
		return false, nil, errNativeMalformed
	}
	if !*r.HasChanges {
		return false, nil, nil
	}
	if r.Secrets == nil {
		return false, nil, errNativeMalformed
	}
	out, err := c.secrets(r.Secrets.Data)
	if err != nil {
		return false, nil, err
	}
	return true, out, nil
}

// List implements smClient.
func (c *nativeClient) List(orgID string) ([]smSecretID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var r struct {
		Secrets []struct {
			ID             *string `json:"id"`
			OrganizationID *string `json:"organizationId"`
			Key            *string `json:"key"`
		} `json:"secrets"`
	}
	if err := c.api(http.MethodGet, "/organizations/"+pathID(orgID)+"/secrets", nil, nil, &r); err != nil {
		return nil, err
	}
	out := make([]smSecretID, 0, len(r.Secrets))
	for _, s := range r.Secrets {
		if s.ID == nil || s.OrganizationID == nil || s.Key == nil {
			return nil, errNativeMalformed
		}
		id, ok1 := normUUID(*s.ID)
		org, ok2 := normUUID(*s.OrganizationID)
		if !ok1 || !ok2 {
			return nil, errNativeMalformed
		}
		k, err := decryptText(c.orgKey, *s.Key)
		if err != nil {
			return nil, err
		}
		out = append(out, smSecretID{ID: id, OrganizationID: org, Key: k})
	}
	return out, nil
}

// ProjectExists implements smClient. Like the SDK it requires the
// project's id, organization, name and dates, and decrypts the name (then
// drops it): a project under another key fails as the SDK does.
func (c *nativeClient) ProjectExists(projectID string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id, ok := normUUID(projectID)
	if !ok {
		return false, errNativeInput
	}
	var m struct {
		ID             *string `json:"id"`
		OrganizationID *string `json:"organizationId"`
		Name           *string `json:"name"`
		CreationDate   *string `json:"creationDate"`
		RevisionDate   *string `json:"revisionDate"`
	}
	if err := c.api(http.MethodGet, "/projects/"+pathID(id), nil, nil, &m); err != nil {
		var he *smHTTPError
		if errors.As(err, &he) && he.Status == http.StatusNotFound {
			return false, nil
		}
		return false, err
	}
	if m.ID == nil || m.OrganizationID == nil || m.Name == nil || m.CreationDate == nil || m.RevisionDate == nil {
		return false, errNativeMalformed
	}
	_, ok1 := normUUID(*m.ID)
	_, ok2 := normUUID(*m.OrganizationID)
	if !ok1 || !ok2 || !validDate(*m.CreationDate) || !validDate(*m.RevisionDate) {
		return false, errNativeMalformed
	}
	if _, err := decryptText(c.orgKey, *m.Name); err != nil {
		return false, err
	}
	return true, nil
}

// getByIDs returns the secrets with the given ids (POST /secrets/get-by-ids).
// The backend does not need it (Sync returns everything in one request);
// it completes the client and is checked against the SDK's GetByIDS.
func (c *nativeClient) getByIDs(ids []string) ([]smSecret, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	norm := make([]string, len(ids))
	for i, id := range ids {
		n, ok := normUUID(id)
		if !ok {
			return nil, errNativeInput
		}
		norm[i] = n
	}
	body, err := json.Marshal(struct {
		IDs []string `json:"ids"`
	}{norm})
	if err != nil {
		return nil, errNativeInput
	}
	var r struct {
		Data []nativeSecretModel `json:"data"`
	}
	if err := c.api(http.MethodPost, "/secrets/get-by-ids", nil, body, &r); err != nil {
		return nil, err
	}
	return c.secrets(r.Data)
}

// secretRequestBody validates key, value and note as the SDK does (key 1 to
// 500 characters and not only whitespace, value 1 to 25000, note at most
// 7000 and not only whitespace), trims key and note, encrypts the three
// under the organization key and returns the JSON body.
func (c *nativeClient) secretRequestBody(projectID, key, value, note string) ([]byte, error) {
	if c.orgKey == nil {
		return nil, errNativeNotLoggedIn
	}
	onlySpace := func(s string) bool { return s != "" && strings.TrimSpace(s) == "" }
	switch n := utf8.RuneCountInString(key); {
	case n < 1 || n > smMaxKeyChars || onlySpace(key):
		return nil, errNativeInput
	}
	if n := utf8.RuneCountInString(value); n < 1 || n > smMaxValueChars {
		return nil, errNativeInput
	}
	if utf8.RuneCountInString(note) > nativeMaxNoteChars || onlySpace(note) {
		return nil, errNativeInput
	}
	enc := func(s string) string {
		b := []byte(s)
		defer clear(b)
		return bwcrypto.Encrypt(c.orgKey, b)
	}
	req := struct {
		Key        string   `json:"key"`
		Value      string   `json:"value"`
		Note       string   `json:"note"`
		ProjectIDs []string `json:"projectIds,omitempty"`
	}{Key: enc(strings.TrimSpace(key)), Value: enc(value), Note: enc(strings.TrimSpace(note))}
	if projectID != "" {
		p, ok := normUUID(projectID)
		if !ok {
			return nil, errNativeInput
		}
		req.ProjectIDs = []string{p}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, errNativeInput
	}
	return body, nil
}

// Create implements smClient.
func (c *nativeClient) Create(orgID, projectID, key, value, note string) (smSecret, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	body, err := c.secretRequestBody(projectID, key, value, note)
	if err != nil {
		return smSecret{}, err
	}
	var m nativeSecretModel
	if err := c.api(http.MethodPost, "/organizations/"+pathID(orgID)+"/secrets", nil, body, &m); err != nil {
		return smSecret{}, err
	}
	return c.secret(&m)
}

// Update implements smClient.
func (c *nativeClient) Update(id, orgID, projectID, key, value, note string) (smSecret, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !isUUID(id) || !isUUID(orgID) {
		return smSecret{}, errNativeInput
	}
	body, err := c.secretRequestBody(projectID, key, value, note)
	if err != nil {
		return smSecret{}, err
	}
	var m nativeSecretModel
	if err := c.api(http.MethodPut, "/secrets/"+pathID(id), nil, body, &m); err != nil {
		return smSecret{}, err
	}
	return c.secret(&m)
}

// Delete implements smClient.
func (c *nativeClient) Delete(ids []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	norm := make([]string, len(ids))
	for i, id := range ids {
		n, ok := normUUID(id)
		if !ok {
			return errNativeInput
		}
		norm[i] = n
	}
	body, err := json.Marshal(norm)
	if err != nil {
		return errNativeInput
	}
	var r struct {
		Data []struct {
			Error *string `json:"error"`
		} `json:"data"`
	}
	if err := c.api(http.MethodPost, "/secrets/delete", nil, body, &r); err != nil {
		return err
	}
	for _, d := range r.Data {
		if d.Error != nil {
			return &smFailure{class: classClient, cause: "upstream refused to delete a secret"}
		}
	}
	return nil
}

var _ smClient = (*nativeClient)(nil)
