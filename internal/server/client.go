package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// MaxResponseSize bounds what the client reads from the broker.
const MaxResponseSize = 16 << 20

// APIError is a non-200 answer from the broker.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("broker answered %d %s: %s", e.Status, e.Code, e.Message)
}

// UnreachableError means the broker's socket could not be dialled.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the broker at %s: %v", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Client talks to a broker over its Unix socket (or loopback TCP).
type Client struct {
	spec ListenSpec
	http *http.Client
}

// NewClient returns a client for the broker listening at spec.
func NewClient(spec ListenSpec) *Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, spec.Network, spec.Address)
		},
		Proxy:               nil,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
	}
	return &Client{spec: spec, http: &http.Client{Transport: tr}}
}

// Env fetches tenant's env in format with the caller token. On a non-200
// answer it returns an *APIError; when the socket cannot be reached, an
// *UnreachableError.
func (c *Client) Env(ctx context.Context, token, tenant, format string) ([]byte, http.Header, error) {
	u := url.URL{Scheme: "http", Host: ClientHost, Path: "/v1/tenants/" + tenant + "/env"}
	if format != "" {
		u.RawQuery = url.Values{"format": {format}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to build the request: %v", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, nil, &UnreachableError{Socket: c.spec.Address, Err: op.Err}
		}
		return nil, nil, fmt.Errorf("request to the broker failed: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("failed to read the broker's answer: %v", err)
	}
	if len(body) > MaxResponseSize {
		return nil, nil, fmt.Errorf("the broker's answer is larger than %d bytes", MaxResponseSize)
	}
	if resp.StatusCode != http.StatusOK {
		var eb ErrorBody
		if json.Unmarshal(body, &eb) != nil || eb.Error.Code == "" {
			return nil, nil, &APIError{Status: resp.StatusCode, Code: "unknown", Message: http.StatusText(resp.StatusCode)}
		}
		return nil, nil, &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	return body, resp.Header, nil
}

// CloseIdle closes idle connections.
func (c *Client) CloseIdle() { c.http.CloseIdleConnections() }
