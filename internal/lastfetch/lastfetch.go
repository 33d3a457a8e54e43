// Package lastfetch keeps each tenant's last fetch outcome and time in a
// small owner-only file in the state dir, so that `broker status` (another
// process) can show "last fetch outcome and age" (DESIGN 6).
//
// `broker serve` holds a Recorder and calls Record once per env request that
// reached the resolver; the file is rewritten atomically (temp file, fsync,
// rename; mode 0600) at most once per MinInterval, and once more at Close.
// The file holds tenant names, outcomes, sources and times: never a value,
// a token or a key name.
package lastfetch

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hostd/broker/internal/state"
)

// FileName is the file's name inside the state dir.
const FileName = "last-fetch.json"

// MinInterval is the least time between two writes of the file.
const MinInterval = time.Second

// Bounds.
const (
	maxFileSize  = 4 << 20 // 4 MiB
	maxEntries   = 100000
	maxFieldSize = 128
)

// Entry is one tenant's last fetch.
type Entry struct {
	// Outcome is the audit outcome ("ok", "upstream_unavailable", …).
	Outcome string `json:"outcome"`
	// Source is where the env came from ("cache", "sm", "bwcli", "stale";
	// empty when the fetch failed).
	Source string `json:"source,omitempty"`
	// At is when the request was answered.
	At time.Time `json:"at"`
}

type file struct {
	Version int              `json:"version"`
	Tenants map[string]Entry `json:"tenants"`
}

// Path returns the file's path in stateDir.
func Path(stateDir string) string { return filepath.Join(stateDir, FileName) }

// Recorder collects outcomes in memory and writes them out. It is safe for
// concurrent use; Record never blocks on I/O.
type Recorder struct {
	path string
	log  *slog.Logger

	mu        sync.Mutex
	entries   map[string]Entry
	dirty     bool
	scheduled bool
	lastWrite time.Time
	closed    bool
	timer     *time.Timer
	writing   sync.Mutex // serializes writes
}

// NewRecorder returns a Recorder writing Path(stateDir). It starts from the
// file's current content, if any, so that tenants not fetched since a
// restart keep their last outcome.
func NewRecorder(stateDir string, logger *slog.Logger) *Recorder {
	if logger == nil {
		logger = slog.Default()
	}
	r := &Recorder{path: Path(stateDir), log: logger, entries: map[string]Entry{}}
	if old, err := Load(stateDir); err == nil {
		r.entries = old
	} else if !os.IsNotExist(err) {
		logger.Warn("lastfetch: ignoring the previous file", "err", err)
	}
	return r
}

// Record notes tenant's latest outcome. Call it only for tenants of the
// policy (names a caller made up must not grow the file).
func (r *Recorder) Record(tenant, outcome, source string, at time.Time) {
	if len(tenant) > maxFieldSize || len(outcome) > maxFieldSize || len(source) > maxFieldSize {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if _, ok := r.entries[tenant]; !ok && len(r.entries) >= maxEntries {
		return
	}
	r.entries[tenant] = Entry{Outcome: outcome, Source: source, At: at.UTC()}
	r.dirty = true
	if r.scheduled {
		return
	}
	r.scheduled = true
	wait := time.Until(r.lastWrite.Add(MinInterval))
	if wait < 0 {
		wait = 0
	}
	r.timer = time.AfterFunc(wait, r.flush)
}

// flush writes the file if something changed.
func (r *Recorder) flush() {
	r.writing.Lock()
	defer r.writing.Unlock()
	r.mu.Lock()
	r.scheduled = false
	if !r.dirty {
		r.mu.Unlock()
		return
	}
	data, err := json.Marshal(file{Version: 1, Tenants: r.entries})
	r.dirty = false
	r.lastWrite = time.Now()
	r.mu.Unlock()
	if err == nil {
		err = state.WriteFileAtomic(r.path, append(data, '\n'), 0o600)
	}
	if err != nil {
		r.log.Warn("lastfetch: cannot write the last-fetch file; broker status will show older outcomes", "err", err)
	}
}

// Close writes what is pending and stops the Recorder.
func (r *Recorder) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	if r.timer != nil {
		r.timer.Stop()
	}
	r.mu.Unlock()
	r.flush()
	return nil
}

// Load reads Path(stateDir). The file must be owner-only. A missing file
// gives an error for which os.IsNotExist is true.
func Load(stateDir string) (map[string]Entry, error) {
	p := Path(stateDir)
	if _, err := os.Lstat(p); err != nil {
		return nil, err
	}
	if err := state.CheckPrivateFile(p); err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parse(f)
}

func parse(rd io.Reader) (map[string]Entry, error) {
	b, err := io.ReadAll(io.LimitReader(rd, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("last-fetch file: %v", err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("last-fetch file: larger than %d bytes", maxFileSize)
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("last-fetch file: %v", err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("last-fetch file: version %d, want 1", f.Version)
	}
	if f.Tenants == nil {
		f.Tenants = map[string]Entry{}
	}
	return f.Tenants, nil
}
