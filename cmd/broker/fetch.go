package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hostd/broker/internal/render"
	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/server"
	"github.com/hostd/broker/internal/state"
)

// maxTokenFileSize bounds --token-file.
const maxTokenFileSize = 4 << 10

// callerFlags are the flags fetch and exec share.
type callerFlags struct {
	tenant, socket, tokenFile string
	timeout                   time.Duration
}

func (c *cli) addCallerFlags(fs *flag.FlagSet, f *callerFlags) {
	fs.StringVar(&f.tenant, "tenant", "", "the `TENANT` whose env to fetch (required)")
	sock := c.getenv("BROKER_SOCKET")
	if sock == "" {
		sock = server.DefaultSocket
	}
	fs.StringVar(&f.socket, "socket", sock, "the broker's socket `PATH` (env BROKER_SOCKET; or tcp:HOST:PORT)")
	fs.StringVar(&f.tokenFile, "token-file", "", "read the caller token from `FILE` (default: env BROKER_TOKEN)")
	fs.DurationVar(&f.timeout, "timeout", 60*time.Second, "give up after this long")
}

// callerToken reads the caller token from BROKER_TOKEN or --token-file (not
// both). Tokens never come from a flag value: argv is visible to every user.
func (c *cli) callerToken(f *callerFlags) (string, error) {
	envTok := c.getenv("BROKER_TOKEN")
	switch {
	case envTok != "" && f.tokenFile != "":
		return "", usageErr("set either BROKER_TOKEN or --token-file, not both")
	case envTok != "":
		return strings.TrimSpace(envTok), nil
	case f.tokenFile != "":
		fh, err := os.Open(f.tokenFile)
		if err != nil {
			return "", fmt.Errorf("failed to open the token file: %v", err)
		}
		defer fh.Close()
		if fi, err := fh.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
			c.warnf("token file %s is readable by group or others (mode %04o); run: chmod 600 %s",
				f.tokenFile, fi.Mode().Perm(), f.tokenFile)
		}
		b, err := io.ReadAll(io.LimitReader(fh, maxTokenFileSize+1))
		if err != nil {
			return "", fmt.Errorf("failed to read the token file: %v", err)
		}
		if len(b) > maxTokenFileSize {
			return "", fmt.Errorf("token file %s is larger than %d bytes; it should hold one token", f.tokenFile, maxTokenFileSize)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", withCode(exitDenied, errors.New("no caller token"),
		"set BROKER_TOKEN or pass --token-file with a token from 'broker token mint'")
}

// getEnv asks the broker for a tenant's env and maps failures to exit codes.
func (c *cli) getEnv(ctx context.Context, f *callerFlags, format string) ([]byte, error) {
	if f.tenant == "" {
		return nil, usageErr("--tenant is required")
	}
	if !scope.ValidTenantName(f.tenant) {
		return nil, usageErr("--tenant %q: tenant names match ^[a-z0-9][a-z0-9_-]{0,62}$", f.tenant)
	}
	spec, err := server.ParseListen(socketSpec(f.socket))
	if err != nil {
		return nil, usageErr("--socket: %v", err)
	}
	tok, err := c.callerToken(f)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	cl := server.NewClient(spec)
	defer cl.CloseIdle()
	body, hdr, err := cl.Env(ctx, tok, f.tenant, format)
	if err != nil {
		return nil, classifyClientError(err, f)
	}
	if hdr.Get(server.HeaderSource) == "stale" {
		c.warnf("tenant %q: the upstream failed; this env is a stale copy %ss old", f.tenant, hdr.Get(server.HeaderStale))
	}
	return body, nil
}

// socketSpec accepts a bare path as well as unix:PATH and tcp:HOST:PORT.
func socketSpec(s string) string {
	if strings.HasPrefix(s, "unix:") || strings.HasPrefix(s, "tcp:") {
		return s
	}
	return "unix:" + s
}

func classifyClientError(err error, f *callerFlags) error {
	var ae *server.APIError
	var ue *server.UnreachableError
	switch {
	case errors.As(err, &ae):
		e := fmt.Errorf("%s", ae.Message)
		switch ae.Status {
		case 401, 403:
			return withCode(exitDenied, e, "")
		case 502, 503, 504:
			if server.PermanentCodes[ae.Code] {
				// Revoked credentials, invalid data or a misconfigured
				// tenant: retrying will not help until the operator acts.
				return withCode(exitFailure, e, "")
			}
			return withCode(exitUnavailable, e, "")
		}
		return withCode(exitFailure, e, "")
	case errors.As(err, &ue):
		return withCode(exitUnavailable, err, "is 'broker serve' running? check --socket or BROKER_SOCKET")
	case errors.Is(err, context.DeadlineExceeded):
		return withCode(exitUnavailable, fmt.Errorf("tenant %q: the broker did not answer within %v", f.tenant, f.timeout),
			"retry later or raise --timeout")
	}
	return err
}

func runFetch(ctx context.Context, c *cli, args []string) error {
	fl := c.newFlagSet("fetch", "--tenant T [--socket PATH] [--format dotenv|shell|json] [--out FILE]")
	var f callerFlags
	var format, out, mode string
	c.addCallerFlags(fl, &f)
	fl.StringVar(&format, "format", "dotenv", "output `FORMAT`: dotenv, shell or json")
	fl.StringVar(&out, "out", "", "write the env to `FILE` atomically instead of stdout")
	fl.StringVar(&mode, "mode", "0600", "file `MODE` for --out")
	if err := parse(fl, args, false); err != nil {
		return err
	}
	if _, err := render.ParseFormat(format); err != nil {
		return usageErr("--format %q: want dotenv, shell or json", format)
	}
	perm, err := strconv.ParseUint(mode, 8, 32)
	if err != nil || perm&^0o777 != 0 {
		return usageErr("--mode %q: want an octal permission such as 0600", mode)
	}
	if perm&0o007 != 0 {
		return usageErr("--mode %s would let every user read the secrets; use 0600 or 0640", mode)
	}
	body, err := c.getEnv(ctx, &f, format)
	if err != nil {
		return err
	}
	if out == "" {
		_, err := c.stdout.Write(body)
		return err
	}
	// The daemon writes into tenants' jails, whose directories the tenant
	// controls: never follow a symbolic link there (DESIGN 2.6).
	if err := state.WriteFileAtomicNoFollow(out, body, fs.FileMode(perm)); err != nil {
		var se *state.SymlinkError
		if errors.As(err, &se) {
			return fmt.Errorf("--out: %v", se)
		}
		return fmt.Errorf("failed to write %s (the previous file, if any, is intact): %v", out, err)
	}
	return nil
}

func runExec(ctx context.Context, c *cli, args []string) error {
	fs := c.newFlagSet("exec", "--tenant T [--socket PATH] -- CMD [ARG...]")
	var f callerFlags
	c.addCallerFlags(fs, &f)
	if err := parse(fs, args, true); err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 {
		return usageErr("exec needs a command after --")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return withCode(exitFailure, fmt.Errorf("command %q not found: %v", argv[0], err), "")
	}
	body, err := c.getEnv(ctx, &f, string(render.JSON))
	if err != nil {
		return err
	}
	var tenantEnv map[string]string
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&tenantEnv); err != nil {
		return fmt.Errorf("the broker's answer is not a JSON object: %v", err)
	}
	return syscall.Exec(path, argv, childEnv(os.Environ(), tenantEnv))
}

// childEnv is the environment exec's child gets: the caller's own, without
// the caller token, with the tenant's keys on top.
func childEnv(base []string, tenant map[string]string) []string {
	out := make([]string, 0, len(base)+len(tenant))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if k == "BROKER_TOKEN" {
			continue
		}
		if _, over := tenant[k]; over {
			continue
		}
		out = append(out, kv)
	}
	for k, v := range tenant {
		out = append(out, k+"="+v)
	}
	return out
}
