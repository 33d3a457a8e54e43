package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// helperStepTimeout bounds one bw process of the shell helper.
const helperStepTimeout = 90 * time.Second

// maxBWOutput bounds what is read from one bw process.
const maxBWOutput = 8 << 20

// HelperStep is one bw process of the shell helper and its wall time.
type HelperStep struct {
	Name string
	Dur  time.Duration
}

// HelperSteps are the steps of the predecessor flow, in order.
var HelperSteps = []string{"config server", "login --apikey", "unlock --raw", "sync", "list items", "lock", "logout"}

// ShellHelper runs the predecessor flow once, the way the shell helper did:
// one bw process per step (config server, login --apikey, unlock --raw
// --passwordenv, sync, list items --collectionid, lock, logout) in a fresh
// BITWARDENCLI_APPDATA_DIR under dir, which it removes afterwards. Secrets go
// to bw through its environment only, and its output is never printed. It
// returns the wall time of each step and the number of items listed.
func ShellHelper(ctx context.Context, bw string, s *BWSeed, collection, dir string) ([]HelperStep, int, error) {
	root, err := os.MkdirTemp(dir, "helper-")
	if err != nil {
		return nil, 0, fmt.Errorf("shell helper: %v", err)
	}
	defer os.RemoveAll(root)
	home, data := filepath.Join(root, "home"), filepath.Join(root, "appdata")
	for _, d := range []string{home, data} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, 0, fmt.Errorf("shell helper: %v", err)
		}
	}
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "BITWARDENCLI_APPDATA_DIR=" + data,
		"NODE_EXTRA_CA_CERTS=" + s.CAFile, "BW_NOINTERACTION=true"}
	var steps []HelperStep
	step := func(name string, env []string, args ...string) ([]byte, error) {
		sctx, cancel := context.WithTimeout(ctx, helperStepTimeout)
		defer cancel()
		cmd := exec.CommandContext(sctx, bw, args...)
		cmd.Env = append(append([]string(nil), base...), env...)
		cmd.Dir = root
		var out, errb capWriter
		cmd.Stdout, cmd.Stderr = &out, &errb
		t0 := time.Now()
		err := cmd.Run()
		steps = append(steps, HelperStep{name, time.Since(t0)})
		if err != nil {
			// bw's stderr carries messages, not values; keep only its
			// first line, bounded.
			msg, _, _ := strings.Cut(strings.TrimSpace(errb.String()), "\n")
			if len(msg) > 200 {
				msg = msg[:200]
			}
			return nil, fmt.Errorf("shell helper: bw %s: %v: %s", name, err, msg)
		}
		return out.Bytes(), nil
	}
	if _, err := step("config server", nil, "config", "server", s.VW.URL()); err != nil {
		return steps, 0, err
	}
	if _, err := step("login --apikey", []string{"BW_CLIENTID=" + s.User.ClientID, "BW_CLIENTSECRET=" + s.User.ClientSecret},
		"login", "--apikey"); err != nil {
		return steps, 0, err
	}
	key, err := step("unlock --raw", []string{"BW_PASSWORD=" + s.password}, "unlock", "--raw", "--passwordenv", "BW_PASSWORD")
	if err != nil {
		return steps, 0, err
	}
	session := []string{"BW_SESSION=" + strings.TrimSpace(string(key))}
	clear(key)
	if _, err := step("sync", session, "sync"); err != nil {
		return steps, 0, err
	}
	out, err := step("list items", session, "list", "items", "--collectionid", s.Collections[collection])
	if err != nil {
		return steps, 0, err
	}
	var items []json.RawMessage
	if err := json.Unmarshal(out, &items); err != nil {
		return steps, 0, errors.New("shell helper: bw list items: output is not a JSON list")
	}
	clear(out)
	if _, err := step("lock", session, "lock"); err != nil {
		return steps, len(items), err
	}
	if _, err := step("logout", nil, "logout"); err != nil {
		return steps, len(items), err
	}
	return steps, len(items), nil
}

// capWriter is a bytes.Buffer that keeps at most maxBWOutput bytes.
type capWriter struct{ bytes.Buffer }

func (c *capWriter) Write(p []byte) (int, error) {
	if room := maxBWOutput - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

var _ io.Writer = (*capWriter)(nil)
