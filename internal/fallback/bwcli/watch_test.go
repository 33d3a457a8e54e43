package bwcli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// procWatch polls /proc while a call runs. It records, for the bw children
// of one state dir (recognized by their environment), the names of their
// environment variables and any BW_SESSION value, and it checks that no
// process's argv holds a watched secret or a seen session key.
type procWatch struct {
	stateDir string
	secrets  map[string]string // name → value, watched in every argv

	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	sessions map[string]bool
	envNames map[string]bool
	children map[int]bool
	leaks    []string
	scans    int
}

func watchProcs(stateDir string, secrets map[string]string) *procWatch {
	p := &procWatch{
		stateDir: stateDir, secrets: secrets,
		stop: make(chan struct{}), done: make(chan struct{}),
		sessions: map[string]bool{}, envNames: map[string]bool{}, children: map[int]bool{},
	}
	go func() {
		defer close(p.done)
		for {
			p.scan()
			select {
			case <-p.stop:
				return
			case <-time.After(15 * time.Millisecond):
			}
		}
	}()
	return p
}

// finish stops the watch and returns it.
func (p *procWatch) finish() *procWatch {
	close(p.stop)
	<-p.done
	p.scan()
	return p
}

func (p *procWatch) scan() {
	ents, _ := os.ReadDir("/proc")
	marker := []byte("BITWARDENCLI_APPDATA_DIR=" + p.stateDir)
	type proc struct {
		pid     int
		cmdline []byte
	}
	var procs []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		procs = append(procs, proc{pid, cmdline})
		environ, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !bytes.Contains(environ, marker) {
			continue
		}
		p.mu.Lock()
		p.children[pid] = true
		for _, kv := range bytes.Split(environ, []byte{0}) {
			name, value, ok := strings.Cut(string(kv), "=")
			if !ok {
				continue
			}
			p.envNames[name] = true
			if name == "BW_SESSION" {
				p.sessions[value] = true
			}
		}
		p.mu.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.scans++
	for _, pr := range procs {
		for name, v := range p.secrets {
			if v != "" && bytes.Contains(pr.cmdline, []byte(v)) {
				p.leaks = append(p.leaks, fmt.Sprintf("pid %d argv holds %s", pr.pid, name))
			}
		}
		for s := range p.sessions {
			if bytes.Contains(pr.cmdline, []byte(s)) {
				p.leaks = append(p.leaks, fmt.Sprintf("pid %d argv holds a session key", pr.pid))
			}
		}
	}
}

// pids returns the bw children seen.
func (p *procWatch) pids() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []int
	for pid := range p.children {
		out = append(out, pid)
	}
	return out
}

// stillThere lists the pids that still exist (running or zombie).
func stillThere(pids []int) []int {
	var out []int
	for _, pid := range pids {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// sessionKeys returns the session keys seen.
func (p *procWatch) sessionKeys() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for s := range p.sessions {
		out = append(out, s)
	}
	return out
}

// check fails t on leaks and on child environment variables outside the
// allowed set.
func (p *procWatch) check(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.leaks {
		t.Errorf("secret in argv: %s", l)
	}
	allowed := map[string]bool{
		"PATH": true, "HOME": true, "BITWARDENCLI_APPDATA_DIR": true, "NODE_EXTRA_CA_CERTS": true,
		"BW_NOINTERACTION": true, "BW_PASSWORD": true, "BW_SESSION": true, "BW_CLIENTID": true, "BW_CLIENTSECRET": true,
		// bw serve sets these in its own process environment at start.
		"BW_SERVE": true,
	}
	var extra []string
	for n := range p.envNames {
		if !allowed[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("bw child environment has unexpected variables %v", extra)
	}
	if len(p.children) == 0 {
		t.Errorf("watch saw no bw child in %d scans", p.scans)
	}
}

// bwProcesses lists the live processes that belong to stateDir: their argv names it or their environment
// points bw at it. Tests running in parallel use other state dirs.
func bwProcesses(stateDir string) []string {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	marker := []byte("BITWARDENCLI_APPDATA_DIR=" + stateDir)
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		stat, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		// Fields after the ")" of comm: state ppid ...
		rest := stat[bytes.LastIndexByte(stat, ')')+1:]
		f := strings.Fields(string(rest))
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		environ, _ := os.ReadFile(filepath.Join(dir, "environ"))
		if len(f) > 0 && (bytes.Contains(cmdline, []byte(stateDir)) || bytes.Contains(environ, marker)) {
			out = append(out, fmt.Sprintf("pid %d state %s", pid, f[0]))
		}
	}
	return out
}
