package smserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hostd/broker/internal/bwcrypto"
)

// rawGet makes one request on a fresh connection and returns the response
// (body read fully, or the read error).
func rawGet(ctx context.Context, url, jwt string) (*http.Response, []byte, error) {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, nil, err
	}
	if jwt != "" {
		req.Header.Set("Authorization", "Bearer "+jwt)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, body, err
}

func TestFaultKinds(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, key := login(t, f.srv, f.token)
	secretURL := f.srv.URL() + "/api/secrets/" + f.sRW
	normal, _, err := rawGet(context.Background(), secretURL, jwt)
	if err != nil || normal.StatusCode != 200 {
		t.Fatalf("normal request: %v", err)
	}

	tests := []struct {
		name  string
		fault Fault
		check func(t *testing.T, resp *http.Response, body []byte, err error)
	}{
		{"status 503 with retry-after", Fault{Route: "api", Status: 503, RetryAfter: 1500 * time.Millisecond},
			func(t *testing.T, resp *http.Response, body []byte, err error) {
				if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "2" {
					t.Errorf("got %v err %v, want 503 with Retry-After 2", resp, err)
				}
			}},
		{"status 429", Fault{Route: "/api/secrets/", Status: 429},
			func(t *testing.T, resp *http.Response, body []byte, err error) {
				if err != nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "" {
					t.Errorf("got %v err %v, want 429 without Retry-After", resp, err)
				}
			}},
		{"retry-after alone", Fault{Route: "api", RetryAfter: time.Second},
			func(t *testing.T, resp *http.Response, body []byte, err error) {
				if err != nil || resp.StatusCode != 200 || resp.Header.Get("Retry-After") != "1" {
					t.Errorf("got %v err %v, want a normal 200 with Retry-After 1", resp, err)
				}
			}},
		{"short delay then normal", Fault{Route: "api", Delay: 10 * time.Millisecond},
			func(t *testing.T, resp *http.Response, body []byte, err error) {
				if err != nil || resp.StatusCode != 200 || !json.Valid(body) {
					t.Errorf("got %v err %v, want a normal 200", resp, err)
				}
			}},
		{"reset", Fault{Route: "api", Reset: true},
			func(t *testing.T, resp *http.Response, body []byte, err error) {
				if err == nil || resp != nil {
					t.Errorf("got a response (%v), want a transport error", resp)
				}
			}},
		{"truncate", Fault{Route: "api", Truncate: true},
			func(t *testing.T, resp *http.Response, body []byte, err error) {
				if resp == nil || resp.StatusCode != 200 || !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("got %v err %v, want 200 and an unexpected EOF", resp, err)
				}
				if n, _ := strconv.Atoi(resp.Header.Get("Content-Length")); len(body) != n/2 || n == 0 {
					t.Errorf("read %d bytes of a declared %d, want half", len(body), n)
				}
			}},
		{"bad json", Fault{Route: "api", BadJSON: true},
			func(t *testing.T, resp *http.Response, body []byte, err error) {
				if err != nil || resp.StatusCode != 200 || json.Valid(body) {
					t.Errorf("got %v err %v valid JSON %v, want 200 with invalid JSON", resp, err, json.Valid(body))
				}
			}},
		{"tamper mac", Fault{Route: "api", TamperMAC: true},
			func(t *testing.T, resp *http.Response, body []byte, err error) {
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("got %v err %v, want 200", resp, err)
				}
				var sec secretModel
				if err := json.Unmarshal(body, &sec); err != nil {
					t.Fatalf("tampered body is not JSON: %v", err)
				}
				for _, e := range []string{sec.Key, sec.Value, sec.Note, sec.Projects[0].Name} {
					if _, err := bwcrypto.Decrypt(key, e); !errors.Is(err, bwcrypto.ErrMAC) {
						t.Errorf("decrypt tampered EncString: err %v, want ErrMAC", err)
					}
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.srv.ClearFaults()
			f.srv.InjectFault(tc.fault)
			resp, body, err := rawGet(context.Background(), secretURL, jwt)
			tc.check(t, resp, body, err)
			if n := f.srv.PendingFaults(); n != 0 {
				t.Errorf("PendingFaults = %d after one use, want 0", n)
			}
			// The next request is normal again.
			resp, body, err = rawGet(context.Background(), secretURL, jwt)
			if err != nil || resp.StatusCode != 200 || !json.Valid(body) {
				t.Errorf("request after the fault: %v err %v, want a normal 200", resp, err)
			}
		})
	}
}

func TestFaultQueue(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, _ := login(t, f.srv, f.token)
	listURL := f.srv.URL() + "/api/organizations/" + f.org + "/secrets"
	status := func() int {
		resp, _, err := rawGet(context.Background(), listURL, jwt)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		return resp.StatusCode
	}

	// Times and order.
	f.srv.InjectFault(Fault{Route: "api", Status: 500, Times: 2})
	f.srv.InjectFault(Fault{Route: "api", Status: 502})
	var got []int
	for i := 0; i < 4; i++ {
		got = append(got, status())
	}
	if g, w := intsString(got), "500,500,502,200"; g != w {
		t.Errorf("statuses = %s, want %s", g, w)
	}

	// An identity fault is not taken by API calls, and vice versa.
	f.srv.InjectFault(Fault{Route: "identity", Status: 503})
	f.srv.InjectFault(Fault{Route: "/api/projects/", Status: 504})
	if s := status(); s != 200 {
		t.Errorf("API call with only identity and project faults queued: %d, want 200", s)
	}
	id, secret, _ := splitToken(t, f.token)
	if s, _ := loginForm(t, f.srv, tokenForm(id, secret)); s != 503 {
		t.Errorf("login with an identity fault: %d, want 503", s)
	}
	if s, _ := call(t, f.srv, "GET", "/api/projects/"+f.rw, jwt, nil); s != 504 {
		t.Errorf("project get with a prefix fault: %d, want 504", s)
	}

	// "" matches anything; ClearFaults drops the queue.
	f.srv.InjectFault(Fault{Status: 418, Times: 5})
	if s, _ := loginForm(t, f.srv, tokenForm(id, secret)); s != 418 {
		t.Errorf("login with a catch-all fault: %d, want 418", s)
	}
	f.srv.ClearFaults()
	if n := f.srv.PendingFaults(); n != 0 {
		t.Errorf("PendingFaults after ClearFaults = %d, want 0", n)
	}
	if s := status(); s != 200 {
		t.Errorf("after ClearFaults: %d, want 200", s)
	}
}

func intsString(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func TestFaultIdentityTamper(t *testing.T) {
	f := newFixture(t, Options{})
	id, secret, atKey := splitToken(t, f.token)
	f.srv.InjectFault(Fault{Route: "identity", TamperMAC: true})
	status, body := loginForm(t, f.srv, tokenForm(id, secret))
	var resp tokenResponse
	if err := json.Unmarshal(body, &resp); status != 200 || err != nil {
		t.Fatalf("status %d err %v, want 200 JSON", status, err)
	}
	if _, err := bwcrypto.Decrypt(atKey, resp.EncryptedPayload); !errors.Is(err, bwcrypto.ErrMAC) {
		t.Errorf("decrypt tampered payload: err %v, want ErrMAC", err)
	}
}

func TestFaultDelayEndsEarly(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, _ := login(t, f.srv, f.token)
	url := f.srv.URL() + "/api/secrets/" + f.sRW

	// The client gives up: it sees its own deadline, the server moves on.
	f.srv.InjectFault(Fault{Route: "api", Delay: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := rawGet(ctx, url, jwt); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("delayed request: err %v, want the client's deadline", err)
	}
	if resp, _, err := rawGet(context.Background(), url, jwt); err != nil || resp.StatusCode != 200 {
		t.Errorf("request after a cancelled delay: %v err %v, want 200", resp, err)
	}

	// Stop during a delay: the request fails and Stop does not wait an hour.
	f.srv.InjectFault(Fault{Route: "api", Delay: time.Hour})
	done := make(chan error, 1)
	go func() {
		_, _, err := rawGet(context.Background(), url, jwt)
		done <- err
	}()
	for f.srv.PendingFaults() != 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	f.srv.Stop()
	if err := <-done; err == nil {
		t.Errorf("delayed request succeeded across Stop")
	}
	t.Logf("Stop during a delayed request took %v", time.Since(start))
}

func TestTamperMACs(t *testing.T) {
	k := bwcrypto.NewKey()
	a, b := bwcrypto.EncryptString(k, "x"), bwcrypto.EncryptString(k, strings.Repeat("y", 40))
	tests := []struct {
		name, in string
		changed  int
	}{
		{"none", `{"a":"plain","b":"2.notreally"}`, 0},
		{"one", `{"a":"` + a + `"}`, 1},
		{"two", `{"a":"` + a + `","b":["` + b + `"]}`, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := tamperMACs([]byte(tc.in))
			if len(out) != len(tc.in) {
				t.Errorf("length %d, want %d", len(out), len(tc.in))
			}
			n := 0
			for _, m := range encStringRE.FindAllString(string(out), -1) {
				if _, err := bwcrypto.Decrypt(k, m); !errors.Is(err, bwcrypto.ErrMAC) {
					t.Errorf("EncString after tamper: err %v, want ErrMAC", err)
				}
				n++
			}
			if n != tc.changed {
				t.Errorf("%d EncStrings, want %d", n, tc.changed)
			}
		})
	}
}
