// Package sdke2e holds the end-to-end test that drives the real
// github.com/bitwarden/sdk-go v1.0.2 (cgo, bundled Rust library) against the
// in-repo Secrets Manager upstream of package smserver. It has no API of its
// own; it exists because cgo (needed to link libm for the SDK) cannot be used
// in _test.go files, and smserver itself stays pure Go.
package sdke2e
