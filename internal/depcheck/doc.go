// Package depcheck holds no code: its test keeps the broker's import graph
// one-way (cmd → server, bwcli → fetch → bwcrypto; scope pure) and its
// third-party dependency list short, as the README promises.
package depcheck
