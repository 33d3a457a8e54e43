package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hostd/broker/internal/bench"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestRunUsage(t *testing.T) {
	tokFile := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(tokFile, []byte("brk_x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no socket", []string{"--tenants", "a"}, map[string]string{"BROKER_TOKEN": "brk_x"}, "--socket is required"},
		{"no tenants", []string{"--socket", "/tmp/x.sock"}, map[string]string{"BROKER_TOKEN": "brk_x"}, "at least one tenant"},
		{"no token", []string{"--socket", "/tmp/x.sock", "--tenants", "a"}, nil, "BROKER_TOKEN"},
		{"both tokens", []string{"--socket", "/tmp/x.sock", "--tenants", "a", "--token-file", tokFile},
			map[string]string{"BROKER_TOKEN": "brk_x"}, "not both"},
		{"stray argument", []string{"--socket", "/tmp/x.sock", "extra"}, nil, "unexpected argument"},
		{"unknown flag", []string{"--token", "brk_x"}, nil, "not defined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := run(context.Background(), tc.args, env(tc.env), &out, &errb)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
			if exitCode(err) != 2 {
				t.Errorf("exit code %d, want 2", exitCode(err))
			}
			if out.Len() != 0 {
				t.Errorf("stdout not empty: %q", out.String())
			}
		})
	}
}

func TestCallerTokenFromFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(f, []byte("brk_fromfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := callerToken(env(nil), f)
	if err != nil || got != "brk_fromfile" {
		t.Errorf("callerToken(file) = %q, %v; want the file's token", got, err)
	}
}

// TestRunCeilingAndDrive serves the ceiling with run and drives it with run.
func TestRunCeilingAndDrive(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "c.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() {
		served <- run(ctx, []string{"--serve-ceiling", "--socket", sock, "--body-size", "123"}, env(nil), &bytes.Buffer{}, &bytes.Buffer{})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ceiling did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--socket", sock, "--tenants", "a,b", "--callers", "2", "--requests", "50", "--json"},
		env(map[string]string{"BROKER_TOKEN": "brk_x"}), &out, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var res bench.LoadResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("output is not JSON: %v", err)
	}
	if res.OK != 50 || res.Errors != 0 || res.BodyBytes != 123 {
		t.Errorf("ok=%d errors=%d body=%d, want 50 ok, 0 errors, 123 bytes", res.OK, res.Errors, res.BodyBytes)
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("ceiling: %v", err)
	}
}
