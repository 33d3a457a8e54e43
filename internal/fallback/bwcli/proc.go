package bwcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Output bounds. bw's answers are JSON of one collection; anything larger is
// refused rather than buffered.
const (
	maxStdout = 4 << 20  // 4 MiB
	maxStderr = 64 << 10 // 64 KiB, never logged, only classified
	maxArgLen = 2048     // one argv element
)

// waitDelay is how long a killed step may hold its pipes open before Wait
// gives up on them.
const waitDelay = 2 * time.Second

// defaultPath is the child's PATH when the broker has none (bw is a node
// script and needs to find node).
const defaultPath = "/usr/local/bin:/usr/bin:/bin"

// execCommand builds the command for a one-shot bw step; tests may replace it.
var execCommand = exec.CommandContext

// bwFlags are the only argv elements allowed to start with '-'.
var bwFlags = map[string]bool{
	"--": true, "--apikey": true, "--organizationid": true, "--collectionid": true,
	"--hostname": true, "--passwordenv": true,
}

// checkArg validates one argv value: bounded, no control characters, no
// leading '-' (it would read as an option).
func checkArg(s string) error {
	switch {
	case s == "":
		return errors.New("empty argument")
	case len(s) > maxArgLen:
		return fmt.Errorf("argument of %d bytes exceeds %d", len(s), maxArgLen)
	case s[0] == '-':
		return errors.New("argument starts with '-'")
	case hasControl(s):
		return errors.New("argument has control characters")
	}
	return nil
}

// hasControl reports whether s holds an ASCII control character.
func hasControl(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0
}

// bwResponse is bw's --response envelope (and bw serve's answer).
type bwResponse struct {
	Success bool            `json:"success"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

// bwStatus is the template of `bw status` / GET /status.
type bwStatus struct {
	ServerURL string `json:"serverUrl"`
	Status    string `json:"status"` // unauthenticated, locked, unlocked
}

// childEnv is the whole environment of a bw child: nothing is inherited
// but PATH; secrets holds the one secret the step needs.
func (b *Backend) childEnv(d *dataDir, secrets []string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	env := []string{
		"PATH=" + path,
		"HOME=" + d.path,
		"BITWARDENCLI_APPDATA_DIR=" + d.path,
		"BW_NOINTERACTION=true",
	}
	if b.cfg.CAFile != "" {
		env = append(env, "NODE_EXTRA_CA_CERTS="+b.cfg.CAFile)
	}
	return append(env, secrets...)
}

// capBuffer keeps the first max bytes written to it and drops the rest.
type capBuffer struct {
	buf       bytes.Buffer
	max       int
	truncated bool
}

func (c *capBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := c.max - c.buf.Len(); n > room {
		c.truncated = true
		p = p[:max(room, 0)]
	}
	c.buf.Write(p)
	return n, nil
}

// run runs one bw step as its own process under StepTimeout, in d, with the
// given secrets in its environment, and returns bw's --response answer.
// args are fixed words or values checked by checkArg. On failure the
// answer may still be returned (a killed unlock may have printed its key).
func (b *Backend) run(ctx context.Context, d *dataDir, step string, secrets []string, args ...string) (*bwResponse, error) {
	for _, a := range args {
		if bwFlags[a] {
			continue
		}
		if err := checkArg(a); err != nil {
			return nil, &stepError{step: step, reason: reasonStart, exit: -1, err: err}
		}
	}
	sctx, cancel := context.WithTimeout(ctx, b.cfg.StepTimeout)
	defer cancel()
	cmd := execCommand(sctx, b.cfg.BW, append([]string{"--response"}, args...)...)
	cmd.Env = b.childEnv(d, secrets)
	cmd.Dir = d.path
	cmd.SysProcAttr = sysProcAttr()
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = waitDelay
	stdout := &capBuffer{max: maxStdout}
	stderr := &capBuffer{max: maxStderr}
	cmd.Stdout, cmd.Stderr = stdout, stderr

	b.nProcs.Add(1)
	err := cmd.Run()
	resp := parseResponse(stdout.buf.Bytes())
	exit := -1
	if cmd.ProcessState != nil {
		exit = cmd.ProcessState.ExitCode()
	}
	switch {
	case sctx.Err() != nil:
		r, cause := ctxReason(ctx, sctx)
		return resp, &stepError{step: step, reason: r, exit: -1, err: cause}
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, os.ErrNotExist), errors.Is(err, os.ErrPermission):
		return nil, &stepError{step: step, reason: reasonStart, exit: -1, err: errors.New("bw cannot be started")}
	case stdout.truncated:
		return nil, &stepError{step: step, reason: reasonOutput, exit: exit, err: fmt.Errorf("output exceeds %d bytes", maxStdout)}
	case err != nil && exit < 0:
		return nil, &stepError{step: step, reason: reasonStart, exit: exit, err: errors.New("bw did not run to completion")}
	case exit == 126 || exit == 127:
		// The shell's "cannot execute" / "not found" (bw is a node script).
		return nil, &stepError{step: step, reason: reasonStart, exit: exit, err: errors.New("bw or node cannot be started")}
	}
	if exit == 0 && resp != nil && resp.Success {
		return resp, nil
	}
	msg := stderr.buf.String()
	if resp != nil {
		msg = resp.Message + "\n" + msg
	}
	r := classify(msg)
	if exit == 0 && resp == nil {
		r = reasonOutput
	}
	return resp, &stepError{step: step, reason: r, exit: exit}
}

// parseResponse finds bw's --response envelope: the last stdout line that is
// a JSON object with a "success" member. It returns nil if there is none.
func parseResponse(out []byte) *bwResponse {
	lines := bytes.Split(out, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		line := bytes.TrimSpace(lines[i])
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var probe struct {
			Success *bool `json:"success"`
		}
		if json.Unmarshal(line, &probe) != nil || probe.Success == nil {
			continue
		}
		var r bwResponse
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		return &r
	}
	return nil
}

// killGroup kills the process group led by pid.
func killGroup(pid int) error {
	err := syscall.Kill(-pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// template decodes the data of a "template" answer (status).
func (r *bwResponse) template(v any) error {
	var t struct {
		Template json.RawMessage `json:"template"`
	}
	if err := json.Unmarshal(r.Data, &t); err != nil || len(t.Template) == 0 {
		return errors.New("malformed template answer")
	}
	return json.Unmarshal(t.Template, v)
}

// list decodes the data of a "list" answer.
func (r *bwResponse) list(v any) error {
	var l struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(r.Data, &l); err != nil || len(l.Data) == 0 {
		return errors.New("malformed list answer")
	}
	return json.Unmarshal(l.Data, v)
}

// raw returns the "raw" member of a "message" answer (unlock's session key).
func (r *bwResponse) raw() string {
	var m struct {
		Raw string `json:"raw"`
	}
	if json.Unmarshal(r.Data, &m) != nil {
		return ""
	}
	return m.Raw
}
