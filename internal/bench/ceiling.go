package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// MaxCeilingBody bounds the ceiling server's body.
const MaxCeilingBody = 1 << 20

// CeilingHandler returns the ceiling: a bare handler that answers every
// request 200 with a body of size bytes and the content headers the broker
// sends, and does nothing else (no token check, no scope, no cache, no
// audit line). What the broker achieves beside it is the cost of its work.
func CeilingHandler(size int) http.Handler {
	body := make([]byte, size)
	for i := range body {
		body[i] = 'x'
		if i%64 == 63 {
			body[i] = '\n'
		}
	}
	n := strconv.Itoa(size)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Content-Length", n)
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	})
}

// ServeCeiling serves CeilingHandler(size) on a Unix socket at path (mode
// 0600; a stale file there is replaced) until ctx is done.
func ServeCeiling(ctx context.Context, path string, size int) error {
	if size < 0 || size > MaxCeilingBody {
		return fmt.Errorf("ceiling: body size %d outside 0..%d", size, MaxCeilingBody)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("ceiling: %s exists and is not a socket", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("ceiling: %v", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("ceiling: %v", err)
	}
	srv := &http.Server{Handler: CeilingHandler(size), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ceiling: %v", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if e := <-errc; e != nil && !errors.Is(e, http.ErrServerClosed) {
		return e
	}
	return err
}

func listenUnix(path string) (net.Listener, error) { return net.Listen("unix", path) }
