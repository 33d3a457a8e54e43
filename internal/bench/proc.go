package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Limits for reading a child's state.
const (
	maxMetricsBytes = 4 << 20
	maxStatusBytes  = 64 << 10
	startTimeout    = 30 * time.Second
	stopTimeout     = 20 * time.Second
)

// Proc is a child process started by StartBroker or StartCeiling.
type Proc struct {
	cmd    *exec.Cmd
	Socket string
	Log    string // where its stderr and stdout go
	// Command is the command line, for the report (it never holds a
	// secret: those go through the environment).
	Command string
	done    chan struct{}
	waitErr error
}

// BaseEnv is the minimal environment for children: PATH and HOME, and
// BROKER_BW when set.
func BaseEnv() []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if v := os.Getenv("BROKER_BW"); v != "" {
		env = append(env, "BROKER_BW="+v)
	}
	return env
}

// StartBroker runs `bin serve` on f's files and waits until its socket
// answers /v1/health.
func StartBroker(ctx context.Context, bin string, f *BrokerFiles) (*Proc, error) {
	args := []string{"serve", "--policy", f.Policy, "--env-file", f.EnvFile, "--state-dir", f.StateDir,
		"--listen", "unix:" + f.Socket, "--log-format", "json"}
	return start(ctx, bin, args, f.Socket, filepath.Join(f.Dir, "broker.log"), "/v1/health")
}

// StartCeiling runs `loadBin --serve-ceiling` on socket with a body of size
// bytes.
func StartCeiling(ctx context.Context, loadBin, socket string, size int) (*Proc, error) {
	args := []string{"--serve-ceiling", "--socket", socket, "--body-size", strconv.Itoa(size)}
	return start(ctx, loadBin, args, socket, socket+".log", "/")
}

func start(ctx context.Context, bin string, args []string, socket, logPath, probe string) (*Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: %v", filepath.Base(bin), err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = BaseEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %v", filepath.Base(bin), err)
	}
	p := &Proc{cmd: cmd, Socket: socket, Log: logPath, Command: filepath.Base(bin) + " " + strings.Join(args, " "),
		done: make(chan struct{})}
	go func() { p.waitErr = cmd.Wait(); close(p.done) }()
	c := NewHTTPClient("unix", socket, 1)
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited before serving (%v); see %s", filepath.Base(bin), p.waitErr, logPath)
		case <-ctx.Done():
			p.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if resp, err := c.Get("http://localhost" + probe); err == nil {
			resp.Body.Close()
			return p, nil
		}
	}
	p.Stop()
	return nil, fmt.Errorf("%s did not answer on %s within %v; see %s", filepath.Base(bin), socket, startTimeout, logPath)
}

// PID returns the child's process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Stop sends SIGTERM and waits (then SIGKILL after stopTimeout).
func (p *Proc) Stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop on SIGTERM within %v; killed", p.Command, stopTimeout)
	}
	var ee *exec.ExitError
	if p.waitErr != nil && !errors.As(p.waitErr, &ee) {
		return p.waitErr
	}
	return nil
}

// Metrics scrapes /metrics over the socket and returns each sample by its
// name with labels as printed (`broker_requests_total{outcome="ok",source="cache"}`).
func (p *Proc) Metrics(ctx context.Context) (map[string]float64, error) {
	c := NewHTTPClient("unix", p.Socket, 0)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Close = true
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: status %d", resp.StatusCode)
	}
	return ParseMetrics(io.LimitReader(resp.Body, maxMetricsBytes))
}

// ParseMetrics reads Prometheus text exposition: comments are skipped, and
// each sample line gives name (with labels) → value.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i <= 0 {
			return nil, fmt.Errorf("metrics: malformed line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: bad value in line %q", line)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// Mem is what /proc/PID/status says about a process's memory and threads.
type Mem struct {
	RSSKiB, HWMKiB int64 // VmRSS and VmHWM (peak RSS)
	Threads        int64
}

// ProcMem reads /proc/pid/status.
func ProcMem(pid int) (Mem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Mem{}, fmt.Errorf("proc status: %v", err)
	}
	defer f.Close()
	return parseStatus(io.LimitReader(f, maxStatusBytes))
}

func parseStatus(r io.Reader) (Mem, error) {
	var m Mem
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.RSSKiB = n
		case "VmHWM":
			m.HWMKiB = n
		case "Threads":
			m.Threads = n
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if m.RSSKiB == 0 {
		return m, errors.New("proc status: no VmRSS line")
	}
	return m, nil
}
