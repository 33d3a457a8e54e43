package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/state"
)

// Exit codes (DESIGN 4).
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitDenied      = 3
	exitUnavailable = 4
)

// exitError carries an exit code and an optional hint with an error.
type exitError struct {
	code int
	err  error
	hint string
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

func withCode(code int, err error, hint string) error {
	return &exitError{code: code, err: err, hint: hint}
}

// env is the environment lookup, replaceable in tests.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

func (c *cli) warnf(format string, args ...any) {
	fmt.Fprintf(c.stderr, "broker: warning: "+format+"\n", args...)
}

func (c *cli) infof(format string, args ...any) {
	fmt.Fprintf(c.stderr, "broker: "+format+"\n", args...)
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, c *cli, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "serve tenants' env over a Unix socket", runServe},
		{"fetch", "print (or write) one tenant's env", runFetch},
		{"exec", "run a command with one tenant's env", runExec},
		{"token", "mint, list and revoke caller tokens", runToken},
		{"status", "show each tenant's backend and health", runStatus},
		{"migrate", "move a tenant off the master password to Secrets Manager", runMigrate},
		{"dev", "run an embedded upstream with demo tenants and serve it", runDev},
		{"version", "print the version", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: broker COMMAND [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nrun 'broker COMMAND -h' for a command's flags")
}

// run runs the broker CLI and returns the process exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv}
	err := dispatch(ctx, c, args)
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	code := exitFailure
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	fmt.Fprintf(stderr, "broker: error: %v\n", err)
	if ee != nil && ee.hint != "" {
		fmt.Fprintf(stderr, "broker: hint: %s\n", ee.hint)
	}
	if code == exitUsage && (ee == nil || ee.hint == "") {
		fmt.Fprintln(stderr, "broker: hint: run 'broker help' or 'broker COMMAND -h'")
	}
	return code
}

func dispatch(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 {
		usage(c.stderr)
		return usageErr("no command given")
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		usage(c.stdout)
		return nil
	}
	for _, cmd := range commands() {
		if cmd.name == name {
			return cmd.run(ctx, c, args[1:])
		}
	}
	return usageErr("unknown command %q", name)
}

// newFlagSet returns a flag set that reports errors through run (not by
// exiting) and prints its usage to stderr.
func (c *cli) newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("broker "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		fmt.Fprintf(c.stderr, "usage: broker %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args, mapping flag errors to usage errors and refusing stray
// positional arguments unless allowPositional.
func parse(fs *flag.FlagSet, args []string, allowPositional bool) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &exitError{code: exitUsage, err: err}
	}
	if !allowPositional && fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// fileFlags are the flags serve, status and migrate share, with their
// environment defaults.
type fileFlags struct {
	policy, envFile, stateDir string
}

func (c *cli) addFileFlags(fs *flag.FlagSet, f *fileFlags) {
	fs.StringVar(&f.policy, "policy", c.getenv("BROKER_POLICY"), "policy `FILE` (JSON; env BROKER_POLICY)")
	fs.StringVar(&f.envFile, "env-file", c.getenv("BROKER_ENV_FILE"),
		"provider env `FILE` with the upstream credentials, mode 0600 (env BROKER_ENV_FILE)")
	fs.StringVar(&f.stateDir, "state-dir", c.getenv("BROKER_STATE_DIR"), "state `DIR`, mode 0700 (env BROKER_STATE_DIR)")
}

// load reads the policy and the provider env file (each checked: the policy
// not writable by others, the env file owner-only).
func (f *fileFlags) load() (*scope.Policy, map[string]string, error) {
	pol, err := state.LoadPolicy(f.policy)
	if err != nil {
		return nil, nil, err
	}
	env, err := state.LoadEnvFile(f.envFile)
	if err != nil {
		return nil, nil, err
	}
	return pol, env, nil
}

func (f *fileFlags) require(policy, envFile bool) error {
	switch {
	case policy && f.policy == "":
		return usageErr("--policy is required (or set BROKER_POLICY)")
	case envFile && f.envFile == "":
		return usageErr("--env-file is required (or set BROKER_ENV_FILE)")
	case f.stateDir == "":
		return usageErr("--state-dir is required (or set BROKER_STATE_DIR)")
	}
	return nil
}
