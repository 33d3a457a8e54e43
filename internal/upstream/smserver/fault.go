package smserver

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Fault is an injected misbehaviour. Faults are queued by InjectFault and
// consumed in order: a request takes the first queued fault whose Route it
// matches, which then has one use fewer. The effects apply before normal
// handling: first Delay, then exactly one of Reset, Status, BadJSON, or the
// normal answer (with RetryAfter, Truncate and TamperMAC applied to it).
type Fault struct {
	// Route selects the requests: "" any request; "identity" the token
	// endpoint; "api" any call under /api/; anything else is a path prefix
	// such as "/api/organizations/".
	Route string
	// Times is how many matching requests the fault affects (0 means 1).
	Times int
	// Status, when not 0, is answered instead of the normal response, with a
	// short text body (e.g. 429, 500, 502, 503).
	Status int
	// RetryAfter sets Retry-After (whole seconds, rounded up) when > 0.
	RetryAfter time.Duration
	// Delay sleeps before answering; it ends early when the client goes
	// away or the server stops.
	Delay time.Duration
	// Reset closes the TCP connection (with RST) without answering.
	Reset bool
	// Truncate sends the normal status and headers (with the full
	// Content-Length), then half the body, then closes the connection.
	Truncate bool
	// BadJSON answers 200 with a body that is not JSON.
	BadJSON bool
	// TamperMAC answers normally but corrupts the MAC of every EncString in
	// the body.
	TamperMAC bool
}

type queuedFault struct {
	f    Fault
	left int
}

// InjectFault queues f.
func (s *Server) InjectFault(f Fault) {
	n := f.Times
	if n <= 0 {
		n = 1
	}
	s.fmu.Lock()
	s.faults = append(s.faults, &queuedFault{f: f, left: n})
	s.fmu.Unlock()
}

// ClearFaults drops every queued fault.
func (s *Server) ClearFaults() {
	s.fmu.Lock()
	s.faults = nil
	s.fmu.Unlock()
}

// PendingFaults returns how many fault uses are still queued.
func (s *Server) PendingFaults() int {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	n := 0
	for _, q := range s.faults {
		n += q.left
	}
	return n
}

func (f *Fault) matches(path string) bool {
	switch f.Route {
	case "":
		return true
	case "identity":
		return path == "/identity/connect/token"
	case "api":
		return strings.HasPrefix(path, "/api/")
	default:
		return strings.HasPrefix(path, f.Route)
	}
}

// takeFault consumes one use of the first queued fault matching path.
func (s *Server) takeFault(path string) (Fault, bool) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	for i, q := range s.faults {
		if !q.f.matches(path) {
			continue
		}
		q.left--
		if q.left == 0 {
			s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
		}
		return q.f, true
	}
	return Fault{}, false
}

// ServeHTTP counts the request, applies a queued fault if one matches, and
// then answers normally.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	_, pattern := s.mux.Handler(r)
	route := pattern
	if route == "" {
		route = "unmatched"
	}
	s.count(route, pattern == "POST /identity/connect/token")
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		if s.opts.Logf != nil {
			s.opts.Logf("smserver: %s %s -> %s (%s)", r.Method, r.URL.Path, sw.outcome(), time.Since(start).Round(time.Microsecond))
		}
	}()

	f, ok := s.takeFault(r.URL.Path)
	if !ok {
		s.mux.ServeHTTP(sw, r)
		return
	}
	if f.Delay > 0 {
		// Read the (bounded) body first so that the server notices a client
		// that goes away during the delay.
		body, err := io.ReadAll(r.Body)
		if err != nil {
			sw.note = "fault delay: body"
			http.Error(sw, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		t := time.NewTimer(f.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			sw.note = "fault delay: client gone"
			return
		case <-s.downChan():
			t.Stop()
			sw.note = "fault delay: server stopped"
			resetConn(w) // never answer once "down"
			return
		}
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(f.RetryAfter.Seconds()))))
	}
	switch {
	case f.Reset:
		sw.note = "fault reset"
		resetConn(w)
		return
	case f.Status != 0:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		sw.WriteHeader(f.Status)
		fmt.Fprintf(sw, "injected fault: %d %s", f.Status, http.StatusText(f.Status))
		return
	case f.BadJSON:
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		sw.WriteHeader(http.StatusOK)
		sw.Write([]byte("<html>this is not json</html>"))
		return
	case !f.Truncate && !f.TamperMAC:
		s.mux.ServeHTTP(sw, r)
		return
	}

	rec := &recorder{header: http.Header{}}
	s.mux.ServeHTTP(rec, r)
	body := rec.body.Bytes()
	if f.TamperMAC {
		body = tamperMACs(body)
	}
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if !f.Truncate {
		sw.WriteHeader(rec.statusCode())
		sw.Write(body)
		return
	}
	sw.note = "fault truncate"
	sw.status = rec.statusCode()
	truncate(w, rec.statusCode(), body[:len(body)/2])
}

// resetConn hijacks the connection and closes it with an RST.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// truncate writes the status line, the headers of w (whose Content-Length
// announces the full body) and part of the body on the raw connection, then
// closes it.
func truncate(w http.ResponseWriter, status int, part []byte) {
	h := w.Header().Clone()
	conn, bw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	writeRaw(bw, status, h, part)
}

func writeRaw(bw *bufio.ReadWriter, status int, h http.Header, part []byte) {
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	h.Set("Connection", "close")
	h.Write(bw)
	bw.WriteString("\r\n")
	bw.Write(part)
	bw.Flush()
}

// encStringRE matches a type-2 EncString inside a JSON body.
var encStringRE = regexp.MustCompile(`2\.[A-Za-z0-9+/]+=*\|[A-Za-z0-9+/]+=*\|([A-Za-z0-9+/]+=*)`)

// tamperMACs flips one bit of the MAC of every EncString in body.
func tamperMACs(body []byte) []byte {
	return encStringRE.ReplaceAllFunc(body, func(m []byte) []byte {
		i := bytes.LastIndexByte(m, '|')
		mac, err := base64.StdEncoding.DecodeString(string(m[i+1:]))
		if err != nil || len(mac) == 0 {
			return m
		}
		mac[0] ^= 0x01
		out := append([]byte{}, m[:i+1]...)
		return append(out, base64.StdEncoding.EncodeToString(mac)...)
	})
}

// statusWriter records the status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
	note   string
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) outcome() string {
	s := strconv.Itoa(w.status)
	if w.status == 0 {
		s = "no answer"
	}
	if w.note != "" {
		s += " (" + w.note + ")"
	}
	return s
}

// recorder captures a response in memory.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

func (r *recorder) statusCode() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}
