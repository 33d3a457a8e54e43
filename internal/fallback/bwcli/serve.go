package bwcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hostd/broker/internal/fetch"
)

const (
	// serveHost is the Host header sent to bw serve. It checks Host against
	// localhost:<port>, and its port defaults to 8087 even on a Unix socket.
	serveHost = "localhost:8087"
	// maxSockPath bounds the socket path (sun_path holds 108 bytes).
	maxSockPath = 107
	// serveStopGrace is how long Close waits after SIGTERM before SIGKILL.
	serveStopGrace = 3 * time.Second
	// serveKillWait bounds the wait for a SIGKILLed serve to be reaped.
	serveKillWait = 5 * time.Second
	// readyPoll is the interval between readiness probes of a new serve.
	readyPoll = 50 * time.Millisecond
	// readyProbeTimeout bounds one readiness probe.
	readyProbeTimeout = time.Second
)

// serveProc is one supervised `bw serve` of a data dir. Its fields are
// guarded by the dir's lock, except done.
type serveProc struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed when the process has exited and been reaped
	output *capBuffer    // its first output, read only after done (never logged)
	client *http.Client
	// tainted: a request was abandoned (timeout, cancel) and its effect is
	// unknown; the process must not be used again.
	tainted bool
}

// alive reports whether the process has not exited.
func (s *serveProc) alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// request sends one request to bw serve and returns its answer and HTTP
// status. Transport errors are returned as is.
func (s *serveProc) request(ctx context.Context, method, path string, body []byte) (*bwResponse, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+serveHost+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxStdout+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxStdout {
		return nil, errOutputTooLarge
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusBadRequest {
		return nil, fmt.Errorf("bw serve answered HTTP %d", resp.StatusCode)
	}
	var r bwResponse
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, errors.New("bw serve answered malformed JSON")
	}
	return &r, nil
}

var errOutputTooLarge = fmt.Errorf("answer exceeds %d bytes", maxStdout)

// serveVault drives a data dir through its bw serve.
type serveVault struct {
	b *Backend
	d *dataDir
}

func (b *Backend) newVault(d *dataDir) vault {
	if b.cfg.Mode == ModeExec {
		return &execVault{b: b, d: d}
	}
	return &serveVault{b: b, d: d}
}

// ensureServe returns the dir's running bw serve, starting it (again) if
// needed and waiting until it answers.
func (b *Backend) ensureServe(ctx context.Context, d *dataDir) (*serveProc, error) {
	if s := d.serve; s != nil {
		if s.alive() && !s.tainted {
			return s, nil
		}
		if !s.alive() {
			b.log.Warn("bw serve exited; starting it again", "dir", d.name, "exit", s.cmd.ProcessState.ExitCode())
		}
		b.killServe(d)
	}
	sock := filepath.Join(d.path, "serve.sock")
	if len(sock) > maxSockPath {
		return nil, fetch.NewError(fetch.KindConfig, "", "the state dir path is too long for bw serve's socket; use a shorter --state-dir or upstream.bw.mode \"exec\"", nil)
	}
	hostname := "unix://" + sock
	if err := checkArg(hostname); err != nil {
		return nil, &stepError{step: "serve", reason: reasonStart, exit: -1, err: err}
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, &stepError{step: "serve", reason: reasonStart, exit: -1, err: fmt.Errorf("remove stale socket: %v", err)}
	}
	cmd := exec.Command(b.cfg.BW, "serve", "--hostname", hostname)
	cmd.Env = b.childEnv(d, nil)
	cmd.Dir = d.path
	cmd.SysProcAttr = sysProcAttr()
	// Its output is kept, bounded, only to classify an exit at start (bw
	// serve refuses to start without a login).
	output := &capBuffer{max: maxStderr}
	cmd.Stdout, cmd.Stderr = output, output
	if err := cmd.Start(); err != nil {
		return nil, &stepError{step: "serve", reason: reasonStart, exit: -1, err: errors.New("bw cannot be started")}
	}
	b.nProcs.Add(1)
	// A new serve's first unlock may run syncs of its own: the call reads
	// after a fresh unlock.
	d.freshRead = true
	d.serveStarts++
	if d.serveStarts > 1 {
		b.nRestarts.Add(1)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	s := &serveProc{
		cmd:    cmd,
		done:   done,
		output: output,
		client: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var dl net.Dialer
				return dl.DialContext(ctx, "unix", sock)
			},
			MaxIdleConns:       2,
			IdleConnTimeout:    30 * time.Second,
			DisableCompression: true,
		}},
	}
	d.serve = s
	b.log.Debug("bw serve started", "dir", d.name, "pid", cmd.Process.Pid)

	sctx, cancel := context.WithTimeout(ctx, b.cfg.StepTimeout)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(sctx, readyProbeTimeout)
		_, err := s.request(pctx, http.MethodGet, "/status", nil)
		pcancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-done:
			d.serve = nil
			r := classify(output.buf.String())
			if r != reasonNotLoggedIn {
				r = reasonServeDown
			}
			return nil, &stepError{step: "serve", reason: r, exit: cmd.ProcessState.ExitCode(), err: errors.New("bw serve exited at start")}
		case <-sctx.Done():
			b.killServe(d)
			r, cause := ctxReason(ctx, sctx)
			return nil, &stepError{step: "serve", reason: r, exit: -1, err: cause}
		case <-time.After(readyPoll):
		}
	}
}

// serveDo sends one request to the dir's serve under StepTimeout and
// classifies a failure. A request abandoned before its answer taints the
// serve: it is killed before the dir is used again.
func (b *Backend) serveDo(ctx context.Context, d *dataDir, step, method, path string, body []byte) (*bwResponse, error) {
	s, err := b.ensureServe(ctx, d)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, b.cfg.StepTimeout)
	defer cancel()
	resp, err := s.request(sctx, method, path, body)
	switch {
	case err == nil:
	case sctx.Err() != nil:
		s.tainted = true
		r, cause := ctxReason(ctx, sctx)
		return nil, &stepError{step: step, reason: r, exit: -1, err: cause}
	case errors.Is(err, errOutputTooLarge):
		return nil, &stepError{step: step, reason: reasonOutput, exit: -1, err: err}
	default:
		// The connection failed or the answer is unusable: serve may be
		// dying; do not trust it again.
		s.tainted = true
		return nil, &stepError{step: step, reason: reasonServeDown, exit: -1, err: errors.New("bw serve did not answer")}
	}
	if !resp.Success {
		return resp, &stepError{step: step, reason: classify(resp.Message), exit: -1}
	}
	return resp, nil
}

// killServe kills the dir's serve (its whole process group) and waits for
// it. A killed serve's unlocked state dies with it, but its data dir may
// keep the session-wrapped key until a lock runs.
func (b *Backend) killServe(d *dataDir) {
	s := d.serve
	if s == nil {
		return
	}
	d.serve = nil
	if s.alive() {
		killGroup(s.cmd.Process.Pid)
	}
	select {
	case <-s.done:
	case <-time.After(serveKillWait):
		b.log.Error("bw serve did not exit after SIGKILL", "dir", d.name, "pid", s.cmd.Process.Pid)
	}
	s.client.CloseIdleConnections()
}

// stopServe locks and stops the dir's serve for Close: lock, verify,
// SIGTERM, then SIGKILL after a grace period, and wait.
func (b *Backend) stopServe(d *dataDir) {
	d.lock <- struct{}{}
	defer release(d.lock)
	s := d.serve
	if s == nil {
		return
	}
	if s.alive() && !s.tainted {
		ctx, cancel := context.WithTimeout(context.Background(), b.cfg.LockTimeout)
		still, err := (&serveVault{b: b, d: d}).lockServe(ctx, s)
		cancel()
		if still {
			b.nUnlocked.Add(1)
			b.log.Error("bw vault found unlocked after lock", "dir", d.name)
		}
		if err != nil {
			b.log.Error("bw lock before stopping serve failed", "dir", d.name, "err", err)
		}
	}
	if s.alive() {
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(serveStopGrace):
		}
	}
	b.killServe(d)
	if d.needsLock {
		// The serve did not lock cleanly: clear the data dir.
		ctx, cancel := context.WithTimeout(context.Background(), b.cfg.LockTimeout)
		defer cancel()
		if err := b.oneShotLock(ctx, d); err != nil {
			b.log.Error("bw lock after stopping serve failed", "dir", d.name, "err", err)
		}
	}
	os.Remove(filepath.Join(d.path, "serve.sock"))
}

func (v *serveVault) status(ctx context.Context) (bwStatus, error) {
	if !hasState(v.d) {
		return bwStatus{Status: "unauthenticated"}, nil
	}
	resp, err := v.b.serveDo(ctx, v.d, "status", http.MethodGet, "/status", nil)
	if reasonOf(err) == reasonNotLoggedIn {
		// bw serve does not start without a login.
		return bwStatus{Status: "unauthenticated"}, nil
	}
	if err != nil {
		return bwStatus{}, err
	}
	var st bwStatus
	if err := resp.template(&st); err != nil {
		return bwStatus{}, &stepError{step: "status", reason: reasonOutput, exit: -1, err: err}
	}
	return st, nil
}

func (v *serveVault) stopForLogin() { v.b.killServe(v.d) }

func (v *serveVault) unlock(ctx context.Context, password fetch.Secret) error {
	body, err := json.Marshal(struct {
		Password string `json:"password"`
	}{password.Reveal()})
	if err != nil {
		return err
	}
	v.d.needsLock = true
	// The answer holds the session key: it is dropped unread.
	_, err = v.b.serveDo(ctx, v.d, "unlock", http.MethodPost, "/unlock", body)
	return err
}

// sync runs POST /sync. bw serve can list an empty or partial collection
// right after a sync that downloaded changes (protocols §10), and the first
// unlock of a new serve or after a login runs syncs of its own (the key-id
// migration), so it locks and unlocks again (a fresh unlock reads the
// collection whole) unless bw's stored state shows the sync downloaded
// nothing: the state is unchanged beyond its last-sync time, and that time
// was rewritten (proof the sync wrote its result before answering).
func (v *serveVault) sync(ctx context.Context, password fetch.Secret) error {
	before := snapshotState(v.d)
	if _, err := v.b.serveDo(ctx, v.d, "sync", http.MethodPost, "/sync", nil); err != nil {
		return err
	}
	after := snapshotState(v.d)
	changed := syncChanged(before, after)
	v.b.log.Debug("bw sync done", "dir", v.d.name, "changed", changed, "fresh_read", v.d.freshRead,
		"state_changed", before.fp == "" || before.fp != after.fp)
	if !changed && !v.d.freshRead {
		return nil
	}
	return v.refresh(ctx, password)
}

// refresh locks and unlocks again, so that the next list reads the stored
// vault whole.
func (v *serveVault) refresh(ctx context.Context, password fetch.Secret) error {
	v.b.nRefreshes.Add(1)
	start := time.Now()
	if _, err := v.b.serveDo(ctx, v.d, "lock", http.MethodPost, "/lock", nil); err != nil {
		return err
	}
	if err := v.unlock(ctx, password); err != nil {
		return err
	}
	v.b.log.Debug("bw fresh unlock done", "dir", v.d.name, "duration", time.Since(start))
	if v.d.serve != nil && v.d.serve.alive() && !v.d.serve.tainted {
		v.d.freshRead = false
	}
	return nil
}

func (v *serveVault) collections(ctx context.Context, org string) ([]bwCollection, error) {
	q := url.Values{"organizationId": {org}}
	resp, err := v.b.serveDo(ctx, v.d, "list collections", http.MethodGet, "/list/object/collections?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	var colls []bwCollection
	if err := resp.list(&colls); err != nil {
		return nil, &stepError{step: "list collections", reason: reasonOutput, exit: -1, err: err}
	}
	return colls, nil
}

func (v *serveVault) items(ctx context.Context, org, coll string) ([]bwItem, error) {
	q := url.Values{"organizationId": {org}, "collectionId": {coll}}
	resp, err := v.b.serveDo(ctx, v.d, "list items", http.MethodGet, "/list/object/items?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	var items []bwItem
	if err := resp.list(&items); err != nil {
		return nil, &stepError{step: "list items", reason: reasonOutput, exit: -1, err: err}
	}
	return items, nil
}

// lock locks through the serve and checks GET /status. When the serve is
// gone, tainted or does not lock, it is killed (its unlocked state dies with
// it) and a one-shot `bw lock` clears the data dir.
func (v *serveVault) lock(ctx context.Context) (bool, error) {
	d := v.d
	if s := d.serve; s != nil && s.alive() && !s.tainted {
		still, err := v.lockServe(ctx, s)
		if err == nil && !still {
			return false, nil
		}
		v.b.killServe(d)
		return still, v.b.oneShotLock(ctx, d)
	}
	v.b.killServe(d)
	if !d.needsLock {
		return false, nil
	}
	return false, v.b.oneShotLock(ctx, d)
}

// lockServe sends POST /lock and verifies with GET /status.
func (v *serveVault) lockServe(ctx context.Context, s *serveProc) (stillUnlocked bool, err error) {
	if _, err := s.request(ctx, http.MethodPost, "/lock", nil); err != nil {
		s.tainted = true
		return false, fmt.Errorf("lock through bw serve: %w", sanitize(err))
	}
	resp, err := s.request(ctx, http.MethodGet, "/status", nil)
	if err != nil {
		s.tainted = true
		return false, fmt.Errorf("status through bw serve: %w", sanitize(err))
	}
	var st bwStatus
	if err := resp.template(&st); err != nil {
		return false, fmt.Errorf("status through bw serve: %v", err)
	}
	if st.Status == "unlocked" {
		return true, nil
	}
	v.d.needsLock = false
	return false, nil
}

// oneShotLock runs `bw lock` as its own process (no serve may run on the
// dir). A dir without a login counts as locked.
func (b *Backend) oneShotLock(ctx context.Context, d *dataDir) error {
	if _, err := b.run(ctx, d, "lock", nil, "lock"); err != nil && reasonOf(err) != reasonNotLoggedIn {
		return err
	}
	d.needsLock = false
	return nil
}

// sanitize keeps only context errors of a transport error (its text may
// name the socket path, which is fine, but nothing else is needed).
func sanitize(err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return context.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return context.Canceled
	}
	return errors.New("bw serve did not answer")
}
