package fetch

import (
	"fmt"

	"github.com/hostd/broker/internal/envkey"
)

// MaxKeyLen bounds a key name; longer names are rejected like invalid ones.
const MaxKeyLen = envkey.MaxLen

// ValidKey reports whether k is a valid environment key:
// ^[A-Za-z_][A-Za-z0-9_]*$, at most MaxKeyLen bytes.
func ValidKey(k string) bool { return envkey.Valid(k) }

// EnvBuilder collects key/value pairs from an upstream, rejecting invalid and
// duplicate keys with an error that names the key (quoted, and only when it
// is printable and short) but never a value.
type EnvBuilder struct {
	Tenant string
	env    Env
}

// Add adds k=v. The first invalid or duplicate key returns a KindData *Error.
func (b *EnvBuilder) Add(k, v string) error {
	if b.env == nil {
		b.env = make(Env)
	}
	if !ValidKey(k) {
		return NewError(KindData, b.Tenant,
			fmt.Sprintf("secret key %s is not a valid environment name (want ^[A-Za-z_][A-Za-z0-9_]*$); rename it upstream", quoteKey(k)), nil)
	}
	if _, dup := b.env[k]; dup {
		return NewError(KindData, b.Tenant,
			fmt.Sprintf("secret key %s appears more than once; remove or rename the duplicate upstream", quoteKey(k)), nil)
	}
	b.env[k] = v
	return nil
}

// Env returns the collected env (never nil).
func (b *EnvBuilder) Env() Env {
	if b.env == nil {
		return Env{}
	}
	return b.env
}

func quoteKey(k string) string { return envkey.Quote(k) }
