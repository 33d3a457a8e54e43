package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hostd/broker/internal/demo"
	"github.com/hostd/broker/internal/fallback/bwcli"
	"github.com/hostd/broker/internal/server"
)

func runDev(ctx context.Context, c *cli, args []string) error {
	fs := c.newFlagSet("dev", "[--dir DIR] [--once] [--fallback=auto|on|off] [--bw-mode serve|exec]")
	var dir, fallback, bwMode string
	var once bool
	fs.StringVar(&dir, "dir", "", "where to write the demo policy, env file and state (default: a new temp dir, removed at exit)")
	fs.BoolVar(&once, "once", false, "fetch and print every demo tenant's env, then exit (what 'make demo' runs)")
	fs.StringVar(&fallback, "fallback", "auto", "include the bw CLI fallback tenant: auto (if bw is installed), on or off")
	fs.StringVar(&bwMode, "bw-mode", "serve", "fallback mode: serve or exec")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	withFallback := false
	switch fallback {
	case "on":
		if _, err := bwcli.FindBW(); err != nil {
			return withCode(exitFailure, err, "run 'make tools' to install the pinned bw CLI, or pass --fallback=off")
		}
		withFallback = true
	case "auto":
		if _, err := bwcli.FindBW(); err != nil {
			c.warnf("bw CLI not found: the demo runs without the fallback tenant")
			c.infof("hint: run 'make tools' (or set BROKER_BW) to include it")
		} else {
			withFallback = true
		}
	case "off":
	default:
		return usageErr("--fallback %q: want auto, on or off", fallback)
	}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "broker-dev-")
		if err != nil {
			return fmt.Errorf("failed to create a temp dir: %v", err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	d, err := demo.Start(demo.Options{Dir: dir, Fallback: withFallback, BWMode: bwMode})
	if err != nil {
		return err
	}
	defer d.Close()
	tok, id, err := mintToken(d.StateDir, d.Names(), nil, 0, "broker dev")
	if err != nil {
		return err
	}
	logger, err := newLogger(c.stderr, "text")
	if err != nil {
		return err
	}
	ff := fileFlags{policy: d.PolicyPath, envFile: d.EnvFile, stateDir: d.StateDir}
	b, err := openBroker(ctx, logger, ff)
	if err != nil {
		return err
	}
	defer b.close()
	sock := filepath.Join(dir, "broker.sock")
	spec := server.ListenSpec{Network: "unix", Address: sock}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- b.serve(sctx, spec, 0o600) }()
	if err := waitForSocket(ctx, sock, served); err != nil {
		return err
	}
	c.infof("demo upstreams: secrets manager %s, vaultwarden %s", d.SM.URL(), vwURL(d))
	c.infof("minted demo token %s for %v", id, d.Names())
	if !once {
		fmt.Fprintf(c.stdout, "broker dev is serving %v on %s\n\n  export BROKER_TOKEN=%s\n", d.Names(), sock, tok.Reveal())
		for _, n := range d.Names() {
			fmt.Fprintf(c.stdout, "  broker fetch --socket %s --tenant %s\n", sock, n)
		}
		fmt.Fprintf(c.stdout, "  curl --unix-socket %s -H \"Authorization: Bearer $BROKER_TOKEN\" http://localhost/v1/tenants/acme/env\n\nCtrl-C stops it.\n", sock)
		return <-served
	}
	cl := server.NewClient(spec)
	defer cl.CloseIdle()
	for _, n := range d.Names() {
		fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		start := time.Now()
		body, hdr, err := cl.Env(fctx, tok.Reveal(), n, "dotenv")
		cancel()
		if err != nil {
			return fmt.Errorf("demo fetch of tenant %q: %v", n, err)
		}
		fmt.Fprintf(c.stdout, "# tenant %s (backend %s, source %s, %v)\n%s\n", n, d.Tenants[n].Backend,
			hdr.Get(server.HeaderSource), time.Since(start).Round(time.Millisecond), body)
	}
	stop()
	if err := <-served; err != nil {
		return err
	}
	c.infof("demo done: every tenant fetched; upstreams stopped")
	return nil
}

func vwURL(d *demo.Demo) string {
	if d.VW == nil {
		return "(off)"
	}
	return d.VW.URL()
}

// waitForSocket waits until the server answers on sock, or fails.
func waitForSocket(ctx context.Context, sock string, served <-chan error) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case err := <-served:
			return fmt.Errorf("the broker stopped before serving: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("the broker did not start listening on %s", sock)
}
