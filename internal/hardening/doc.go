// Package hardening is the broker's hardening suite. It holds no product
// code: everything is in its _test.go files, which `go test` runs like any
// other package's tests.
//
// The suite drives the real broker. TestMain builds cmd/broker with `go
// build` (with -race when the suite itself runs under -race) into a private
// temporary directory, and most tests run that binary as a subprocess
// (`broker serve`, `broker fetch --out`, `broker exec`, `broker token mint`)
// against the in-repo upstreams (internal/upstream/smserver and vwserver)
// on loopback. The load test uses internal/server and internal/fetch
// in-process, over a real Unix socket, so that it can count goroutines and
// open files precisely.
//
// What it covers (each is described in SECURITY.md with what it proves):
//
//   - cross-tenant path and token tricks against a running broker;
//   - a fault matrix against the upstreams (deadline, reset, truncated
//     body, invalid JSON, tampered MAC, 429/5xx, revoked token, upstream
//     down, full disk for --out): exit codes, no partial env, no panic, no
//     goroutine or open file left behind;
//   - crash safety of `broker fetch --out` under kill -9 at many points;
//   - load and soak (BROKER_SOAK=1 for the full 100,000-request run);
//   - process hygiene: umask, core dumps, non-dumpable, children's
//     environments;
//   - a leak scan: every captured log line, audit line, error message and
//     output of the suite is searched for every seeded secret, and TestMain
//     fails the run on any hit.
//
// Fuzz targets for the parsers live next to the parsers (internal/scope,
// internal/state, internal/render, internal/server); `make fuzz` runs each.
package hardening
