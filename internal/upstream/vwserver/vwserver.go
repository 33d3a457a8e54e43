// Package vwserver is an in-repo, Vaultwarden-compatible password-manager
// upstream that the real Bitwarden CLI (bw 2026.9.0) logs in to, unlocks and
// reads from, with the real cryptography.
//
// It exists for tests and for `broker dev`: it speaks exactly the subset of
// the Bitwarden API that shared/protocols/password-manager.md records (the
// identity token endpoint, /api/sync, the user-key-id backfill, the revision
// date, collections, config and prelogin), over HTTPS with its own ECDSA
// P-256 CA, so the CLI can be pointed at it with NODE_EXTRA_CA_CERTS.
//
// # Keys
//
// All cryptography happens at seed time (AddUser, AddMember, AddLogin, …),
// playing the part of the client that would have created the vault. The
// server then keeps only what a real server holds: ciphertext, the wrapped
// user key and private key, the users' public keys and the API client
// secrets. The one exception is the organization key, which the seeding side
// keeps so that later seeding calls (AddLogin, UpdateItem) can encrypt. The
// master password is never stored.
//
// # Faults and counters
//
// Stats counts requests per route and every login attempt (each POST to
// /identity/connect/token, whatever its outcome), which is what an upstream
// rate limit counts. InjectFault makes chosen routes fail, stall or reset
// their connection; Stop takes the whole upstream down while keeping its
// state, and StartAt brings it back on the same address.
//
// A Server is safe for concurrent use.
package vwserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options.
const (
	DefaultKDFIterations = 600000
	DefaultTokenLifetime = time.Hour
	// MinKDFIterations is the smallest PBKDF2 iteration count the bw SDK
	// accepts at unlock.
	MinKDFIterations = 5000
	// minTokenLifetime keeps the access token well above the client's
	// five-minute refresh margin (pitfall P7).
	minTokenLifetime = 10 * time.Minute
)

// Options configures a Server. The zero value gives the defaults.
type Options struct {
	// KDFIterations is the PBKDF2-SHA256 iteration count for new users;
	// 0 means DefaultKDFIterations. Tests use MinKDFIterations.
	KDFIterations int
	// TokenLifetime is the access token's expires_in; 0 means
	// DefaultTokenLifetime. It must be at least 10 minutes: the CLI refreshes
	// any token with less than 5 minutes left (P7).
	TokenLifetime time.Duration
	// Logf, if set, receives one line per request (method, path, status)
	// and server errors. It never receives secrets.
	Logf func(format string, args ...any)
}

// Server is the upstream. Create it with New, then Start or StartAt.
type Server struct {
	opts Options

	caPEM   []byte
	tlsCert tls.Certificate
	jwtKey  []byte // HMAC-SHA256 key for access tokens; never leaves the process

	mux *http.ServeMux

	mu          sync.Mutex // guards the vault state below
	users       map[string]*user
	byClientID  map[string]*user
	orgs        map[string]*org
	collections map[string]*collection
	items       map[string]*item
	revision    int64 // ms since the epoch, strictly increasing

	lnMu    sync.Mutex // guards the listener state below
	srv     *http.Server
	addr    string
	stopped chan struct{} // closed by Stop; fresh on every start
	closed  bool

	logins   atomic.Int64
	requests atomic.Int64
	statsMu  sync.Mutex
	byRoute  map[string]int64
	faultsMu sync.Mutex
	faults   []*Fault
}

// New creates a Server with a fresh CA and a leaf certificate for
// localhost, 127.0.0.1 and ::1. It does not listen yet.
func New(opts Options) (*Server, error) {
	if opts.KDFIterations == 0 {
		opts.KDFIterations = DefaultKDFIterations
	}
	if opts.KDFIterations < MinKDFIterations {
		return nil, fmt.Errorf("vwserver: kdf iterations %d below the client minimum %d", opts.KDFIterations, MinKDFIterations)
	}
	if opts.TokenLifetime == 0 {
		opts.TokenLifetime = DefaultTokenLifetime
	}
	if opts.TokenLifetime < minTokenLifetime {
		return nil, fmt.Errorf("vwserver: token lifetime %v below %v: the client would refresh it on every call", opts.TokenLifetime, minTokenLifetime)
	}
	caPEM, cert, err := newCertificates()
	if err != nil {
		return nil, fmt.Errorf("vwserver: certificates: %v", err)
	}
	s := &Server{
		opts:        opts,
		caPEM:       caPEM,
		tlsCert:     cert,
		jwtKey:      make([]byte, 32),
		users:       map[string]*user{},
		byClientID:  map[string]*user{},
		orgs:        map[string]*org{},
		collections: map[string]*collection{},
		items:       map[string]*item{},
		revision:    time.Now().UnixMilli(),
		byRoute:     map[string]int64{},
	}
	rand.Read(s.jwtKey)
	s.mux = s.routes()
	return s, nil
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// Start listens with TLS on 127.0.0.1 on a free port.
func (s *Server) Start() error { return s.StartAt("127.0.0.1:0") }

// StartAt listens with TLS on addr (host:port). After Stop, StartAt with the
// old Addr brings the same upstream back.
func (s *Server) StartAt(addr string) error {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.closed {
		return errors.New("vwserver: start: server is closed")
	}
	if s.srv != nil {
		return errors.New("vwserver: start: already listening")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("vwserver: listen: %v", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(s.serveHTTP),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{s.tlsCert},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"http/1.1"}, // Reset faults hijack the connection
		},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(logfWriter{s}, "", 0),
	}
	s.srv = srv
	s.addr = ln.Addr().String()
	s.stopped = make(chan struct{})
	go func() {
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logf("vwserver: serve: %v", err)
		}
	}()
	return nil
}

// Stop stops listening and closes every connection, as if the upstream went
// down. The vault state is kept; StartAt(s.Addr()) brings it back.
func (s *Server) Stop() {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.srv == nil {
		return
	}
	close(s.stopped)
	s.srv.Close()
	s.srv = nil
}

// Close stops the server for good.
func (s *Server) Close() {
	s.Stop()
	s.lnMu.Lock()
	s.closed = true
	s.lnMu.Unlock()
}

// Addr returns the listening address, 127.0.0.1:PORT (the last one after
// Stop; empty before the first start).
func (s *Server) Addr() string {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	return s.addr
}

// URL returns https://localhost:PORT, the value for `bw config server`.
func (s *Server) URL() string {
	_, port, err := net.SplitHostPort(s.Addr())
	if err != nil {
		return ""
	}
	return "https://localhost:" + port
}

// CAPEM returns the PEM-encoded CA certificate (for NODE_EXTRA_CA_CERTS).
func (s *Server) CAPEM() []byte { return append([]byte(nil), s.caPEM...) }

// WriteCA writes the CA certificate in PEM to path with mode 0600.
func (s *Server) WriteCA(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("vwserver: write ca: %v", err)
	}
	if _, err := f.Write(s.caPEM); err != nil {
		f.Close()
		return fmt.Errorf("vwserver: write ca: %v", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("vwserver: write ca: %v", err)
	}
	return nil
}

// newCertificates makes an ECDSA P-256 CA and a leaf for localhost,
// 127.0.0.1 and ::1 signed by it.
func newCertificates() (caPEM []byte, leaf tls.Certificate, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, leaf, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: "broker vwserver test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, leaf, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, leaf, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, leaf, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, leaf, err
	}
	leaf = tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return caPEM, leaf, nil
}

func randSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n.Add(n, big.NewInt(1))
}

// logfWriter sends http.Server's own error lines (TLS handshake errors and
// the like) to Options.Logf.
type logfWriter struct{ s *Server }

func (w logfWriter) Write(p []byte) (int, error) {
	w.s.logf("vwserver: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Stats are the request counters since New or the last ResetStats.
type Stats struct {
	// Logins counts POST /identity/connect/token requests, any outcome
	// (including faulted ones): what an upstream login rate limit counts.
	Logins int64
	// Requests counts every request.
	Requests int64
	// ByRoute counts requests per route pattern, such as
	// "GET /api/sync" or "POST /identity/connect/token"; unmatched
	// paths count under "unknown".
	ByRoute map[string]int64
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	st := Stats{Logins: s.logins.Load(), Requests: s.requests.Load(), ByRoute: make(map[string]int64, len(s.byRoute))}
	for k, v := range s.byRoute {
		st.ByRoute[k] = v
	}
	return st
}

// ResetStats zeroes the counters.
func (s *Server) ResetStats() {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	s.logins.Store(0)
	s.requests.Store(0)
	clear(s.byRoute)
}

// Fault makes matching requests misbehave. Faults are checked in the order
// they were injected; the first match applies.
type Fault struct {
	// Route selects requests: "identity" (every /identity/ path), "api"
	// (every /api/ path), or a path prefix such as "/api/sync".
	Route string
	// Times is how many matching requests the fault affects; 0 or less
	// means every matching request until ClearFaults.
	Times int
	// Status, if non-zero, is answered instead of the real response, with
	// a JSON error body.
	Status int
	// Delay stalls the request first (until the delay passes, the client
	// goes away or the server stops); with Status 0 and Reset false the
	// request is then served normally.
	Delay time.Duration
	// Reset closes the connection abruptly (TCP RST) instead of answering.
	Reset bool
}

func (f *Fault) matches(path string) bool {
	switch f.Route {
	case "identity":
		return strings.HasPrefix(path, "/identity/")
	case "api":
		return strings.HasPrefix(path, "/api/")
	case "":
		return false
	default:
		return strings.HasPrefix(path, f.Route)
	}
}

// InjectFault adds a fault.
func (s *Server) InjectFault(f Fault) {
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	s.faults = append(s.faults, &f)
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	s.faults = nil
}

// takeFault returns a copy of the first fault matching path and uses up one
// of its Times.
func (s *Server) takeFault(path string) (Fault, bool) {
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	for i, f := range s.faults {
		if !f.matches(path) {
			continue
		}
		got := *f
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		return got, true
	}
	return Fault{}, false
}

// serveHTTP counts the request, applies any fault, then routes it.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if r.Method == http.MethodPost && r.URL.Path == "/identity/connect/token" {
		s.logins.Add(1)
	}
	_, pattern := s.mux.Handler(r)
	if pattern == "" || pattern == "/" {
		pattern = "unknown"
	}
	s.statsMu.Lock()
	s.byRoute[pattern]++
	s.statsMu.Unlock()

	sw := &statusWriter{ResponseWriter: w}
	defer func() { s.logf("vwserver: %s %s -> %d", r.Method, r.URL.Path, sw.code()) }()

	if f, ok := s.takeFault(r.URL.Path); ok {
		if f.Delay > 0 && !s.stall(r.Context(), f.Delay) {
			return
		}
		if f.Reset {
			resetConn(w)
			sw.status = -1
			return
		}
		if f.Status != 0 {
			writeJSON(sw, f.Status, errorBody("injected fault"))
			return
		}
	}
	s.mux.ServeHTTP(sw, r)
}

// stall waits d, and reports whether the request should go on (false when
// the client left or the server stopped).
func (s *Server) stall(ctx context.Context, d time.Duration) bool {
	s.lnMu.Lock()
	stopped := s.stopped
	s.lnMu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stopped:
		return false
	}
}

// resetConn hijacks the connection and closes it with a TCP RST.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	var raw net.Conn = conn
	if tc, ok := conn.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		tcp.SetLinger(0)
	}
	raw.Close()
}

// statusWriter remembers the status code for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) code() string {
	switch w.status {
	case 0:
		return "200"
	case -1:
		return "reset"
	}
	return strconv.Itoa(w.status)
}
