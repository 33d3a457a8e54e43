// Package envkey defines what a valid environment key is, for every part of
// the broker that reads or writes one (backends, rendering, token key
// globs). It is a leaf: it imports only the standard library.
package envkey

import "fmt"

// MaxLen bounds a key name; longer names are rejected like invalid ones.
const MaxLen = 256

// Valid reports whether k is a valid environment key:
// ^[A-Za-z_][A-Za-z0-9_]*$, at most MaxLen bytes.
func Valid(k string) bool {
	if k == "" || len(k) > MaxLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c == '_', 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Quote quotes a key name for an error message, truncated so that a hostile
// upstream cannot flood logs through it. Keys are names, not secrets.
func Quote(k string) string {
	const max = 64
	if len(k) > max {
		return fmt.Sprintf("%q… (%d bytes)", k[:max], len(k))
	}
	return fmt.Sprintf("%q", k)
}
