package fetch

import (
	"context"
	"github.com/hostd/broker/internal/testutil"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testCallLimit replaces smCallLimit in these tests.
const testCallLimit = 200 * time.Millisecond

// eventually polls cond every few milliseconds for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// entryRefs returns the refs of tok's entry in the pool (-1 if absent).
func entryRefs(s *SM, tok string) int {
	pt, _ := parseAccessToken(tok)
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	e, ok := s.pool.lru.Peek(pt.hash)
	if !ok {
		return -1
	}
	return e.refs
}

func TestHungCallIsAbandoned(t *testing.T) {
	u := newFakeUpstream(t)
	u.add(testProjectA, "K", "v")
	s := newFakeSM(t, u, SMConfig{MaxConcurrent: 1})
	s.callLimit = testCallLimit
	logs := &testutil.SyncBuffer{}
	s.log = slog.New(slog.NewTextHandler(logs, nil))
	ten := smTenant("acme", 1, testProjectA)
	if _, err := s.Fetch(context.Background(), ten); err != nil {
		t.Fatal(err)
	}

	block := make(chan struct{})
	entered := make(chan struct{}, 1)
	u.mu.Lock()
	u.block, u.entered = block, entered
	u.mu.Unlock()
	// A caller without a deadline still gets an answer.
	errA := make(chan error, 1)
	go func() { _, err := s.Fetch(context.Background(), ten); errA <- err }()
	<-entered
	u.mu.Lock()
	u.block, u.entered = nil, nil
	u.mu.Unlock()
	// A second caller queues on the same client (caller A, A's running
	// call and B hold it).
	errB := make(chan error, 1)
	go func() { _, err := s.Fetch(context.Background(), ten); errB <- err }()
	eventually(t, "the second caller to queue", func() bool { return entryRefs(s, ten.AccessToken.Reveal()) == 3 })

	wantKind(t, <-errA, KindUnavailable)
	wantKind(t, <-errB, KindUnavailable)
	if st := s.Stats(); st.Abandoned != 1 || st.LiveClients != 1 {
		t.Errorf("Stats = %+v, want 1 abandoned, 1 live client", st)
	}

	// The slot is free (MaxConcurrent is 1) and the token gets a new client.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	env, err := s.Fetch(ctx, ten)
	if err != nil {
		t.Fatalf("Fetch after the abandoned call: %v", err)
	}
	if env["K"] != "v" {
		t.Errorf("env[K] differs after the client was replaced")
	}
	clients, closes, logins, _ := u.counts()
	if clients != 2 || closes != 0 || logins != 2 {
		t.Errorf("clients, closes, logins = %d, %d, %d; want 2, 0, 2 (the hung client is not closed while its call runs)", clients, closes, logins)
	}
	if st := s.Stats(); st.LiveClients != 2 {
		t.Errorf("live clients = %d while the hung call runs, want 2", st.LiveClients)
	}

	// The hung call returns: its client is closed, once.
	close(block)
	eventually(t, "the hung client to be closed", func() bool { _, c, _, _ := u.counts(); return c == 1 })
	eventually(t, "the hung count to drop", func() bool { return s.hung.Load() == 0 })
	if _, err := s.Fetch(ctx, ten); err != nil {
		t.Fatal(err)
	}
	clients, closes, _, _ = u.counts()
	if clients != 2 || closes != 1 {
		t.Errorf("clients, closes = %d, %d; want 2, 1", clients, closes)
	}
	if st := s.Stats(); st.LiveClients != 1 || st.Abandoned != 1 {
		t.Errorf("Stats = %+v, want 1 live client, 1 abandoned", st)
	}
	if len(s.sem) != 0 {
		t.Errorf("slots held after every call returned = %d, want 0", len(s.sem))
	}

	out := logs.String()
	if n := strings.Count(out, "level=ERROR"); n != 1 {
		t.Errorf("error log lines = %d, want 1", n)
	}
	if strings.Contains(out, ten.AccessToken.Reveal()) || strings.Contains(out, "SecretPart") {
		t.Errorf("the logs hold the access token")
	}
}

// Past maxHung hanging calls, an abandoned call keeps its slot until it
// returns: a permanently hanging upstream cannot exhaust threads.
func TestTooManyHungCallsKeepTheirSlots(t *testing.T) {
	u := newFakeUpstream(t)
	s := newFakeSM(t, u, SMConfig{MaxConcurrent: 1})
	s.callLimit = testCallLimit
	s.maxHung = 0
	block := make(chan struct{})
	entered := make(chan struct{}, 1)
	u.mu.Lock()
	u.block, u.entered = block, entered
	u.mu.Unlock()
	a, b := smTenant("a", 1, testProjectA), smTenant("b", 2, testProjectA)

	errA := make(chan error, 1)
	go func() { _, err := s.Fetch(context.Background(), a); errA <- err }()
	<-entered
	u.mu.Lock()
	u.block, u.entered = nil, nil
	u.mu.Unlock()
	wantKind(t, <-errA, KindUnavailable)
	if st := s.Stats(); st.Abandoned != 1 {
		t.Errorf("abandoned = %d, want 1", st.Abandoned)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := s.Fetch(ctx, b)
	wantKind(t, err, KindTimeout)

	close(block)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if _, err := s.Fetch(ctx2, b); err != nil {
		t.Fatalf("Fetch after the hung call returned: %v", err)
	}
	eventually(t, "the hung client to be closed", func() bool { _, c, _, _ := u.counts(); return c == 1 })
}

// Calls that return just as the limit passes: whoever wins frees the slot,
// exactly once.
func TestWatchdogRaceFreesSlotsOnce(t *testing.T) {
	u := newFakeUpstream(t)
	u.add(testProjectA, "K", "v")
	s := newFakeSM(t, u, SMConfig{MaxConcurrent: 2})
	s.newClient = func(api, identity string) (smClient, error) {
		c, err := u.newClient(api, identity)
		return jitterClient{c}, err
	}
	// Limits around the calls' duration, so that both sides win often.
	for _, limit := range []time.Duration{50 * time.Microsecond, 200 * time.Microsecond, time.Millisecond} {
		s.callLimit = limit
		before := s.Stats().Abandoned
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 25; j++ {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := s.Fetch(ctx, smTenant("t", 1+j%3, testProjectA))
					cancel()
					if err != nil && KindOf(err) != KindUnavailable {
						t.Errorf("Fetch: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		eventually(t, "every hung call to return", func() bool { return s.hung.Load() == 0 })
		if n := len(s.sem); n != 0 {
			t.Errorf("limit %v: slots held after every call returned = %d, want 0", limit, n)
		}
		t.Logf("limit %v: abandoned %d calls in 100 fetches", limit, s.Stats().Abandoned-before)
	}
	// Both slots still work.
	s.callLimit = smCallLimit
	for i := 1; i <= 2; i++ {
		if _, err := s.Fetch(context.Background(), smTenant("t", i, testProjectA)); err != nil {
			t.Errorf("Fetch after the race: %v", err)
		}
	}
	s.Close()
	eventually(t, "every client to be closed", func() bool { return s.Stats().LiveClients == 0 })
	clients, closes, _, _ := u.counts()
	if clients != closes {
		t.Errorf("clients, closes = %d, %d; want every client closed once", clients, closes)
	}
}

// jitterClient makes Login and Sync last 0 to 400 µs.
type jitterClient struct{ smClient }

func (c jitterClient) Login(token, state string) error {
	time.Sleep(time.Duration(rand.N(400)) * time.Microsecond)
	return c.smClient.Login(token, state)
}

func (c jitterClient) Sync(org string, last *time.Time) (bool, []smSecret, error) {
	time.Sleep(time.Duration(rand.N(400)) * time.Microsecond)
	return c.smClient.Sync(org, last)
}

// silentListener accepts connections and never answers. Closing it (at
// cleanup) closes the accepted connections too.
type silentListener struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newSilentListener(t *testing.T) *silentListener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &silentListener{ln: ln}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			l.conns = append(l.conns, c)
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *silentListener) url() string { return "http://" + l.ln.Addr().String() }

func (l *silentListener) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *silentListener) close() {
	l.ln.Close()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

// The real clients against an upstream that accepts and never answers: the
// SDK's call never returns by itself, the native one only after 60 s. The
// call limit frees the only slot twice in a row; the hung clients are closed
// once their calls end (when the connections are closed).
func TestHungUpstreamRealClients(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		l := newSilentListener(t)
		s, err := NewSM(SMConfig{
			APIURL: l.url() + "/api", IdentityURL: l.url() + "/identity",
			StateDir: filepath.Join(t.TempDir(), "sm"), MaxConcurrent: 1,
			Logger: quietLogger(), Client: kind,
		})
		if err != nil {
			t.Fatal(err)
		}
		s.callLimit = testCallLimit
		ten := smTenant("acme", 1, testProjectA)
		for i := 1; i <= 2; i++ {
			start := time.Now()
			_, err := s.Fetch(context.Background(), ten)
			wantKind(t, err, KindUnavailable)
			t.Logf("fetch %d gave up after %v", i, time.Since(start).Round(time.Millisecond))
			if st := s.Stats(); st.Abandoned != int64(i) || st.LiveClients != int64(i) {
				t.Errorf("after fetch %d: Stats = %+v, want %d abandoned, %d live", i, st, i, i)
			}
		}
		if n := l.accepted(); n < 2 {
			t.Errorf("connections accepted = %d, want one per client (2)", n)
		}
		l.close()
		eventually(t, "the hung clients to be closed", func() bool { return s.Stats().LiveClients == 0 })
		if n := s.hung.Load(); n != 0 {
			t.Errorf("hung calls after the connections closed = %d, want 0", n)
		}
		s.Close()
	})
}
