package peercred

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestGetUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		c   net.Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- result{c, err}
	}()
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	r := <-accepted
	if r.err != nil {
		t.Fatal(r.err)
	}
	server := r.c
	defer server.Close()

	wantPID := int32(os.Getpid())
	switch runtime.GOOS {
	case "freebsd":
		wantPID = -1
	case "linux":
	default:
		if _, err := Get(server); err == nil || !strings.Contains(err.Error(), "not supported on "+runtime.GOOS) {
			t.Fatalf("Get on %s: got error %v, want not supported", runtime.GOOS, err)
		}
		return
	}
	// Both ends belong to this process, so each sees it as the peer.
	for name, c := range map[string]net.Conn{"server side": server, "client side": client} {
		got, err := Get(c)
		if err != nil {
			t.Fatalf("%s: Get: %v", name, err)
		}
		want := Cred{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: wantPID}
		if got != want {
			t.Errorf("%s: Get = %+v, want %+v", name, got, want)
		}
	}
}

func TestGetNotUnix(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := Get(a); err == nil || !strings.Contains(err.Error(), "not a Unix socket") {
		t.Errorf("Get(net.Pipe) = %v, want a not-a-Unix-socket error", err)
	}
}

func TestGetClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := Get(c); err == nil {
		t.Errorf("Get on a closed connection: got no error")
	}
}
