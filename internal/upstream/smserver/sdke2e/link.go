//go:build cgo && linux && amd64

package sdke2e

// The SDK's Rust static library needs libm (pow, from tokio); gcc links with
// --as-needed here, which would drop a plain -lm.

// #cgo LDFLAGS: -Wl,--push-state,--no-as-needed -lm -Wl,--pop-state
import "C"
