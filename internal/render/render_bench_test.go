package render_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hostd/broker/internal/render"
)

// benchEnv returns the demo-like env (hard values) plus extra plain keys.
func benchEnv(extra int) map[string]string {
	env := map[string]string{
		"MULTILINE": "line1\nline2\n",
		"QUOTES":    `he said "hi" and 'bye'`,
		"DOLLARS":   "$HOME ${PATH} $ \\$ `whoami` $(id)",
		"BACKSLASH": `back\slash\n\\ and trailing\`,
		"ZIP":       "007",
		"UNICODE":   "ünïcødé 😀 ключ 日本語",
		"SPACES":    "  padded  \t",
		"HASH":      "#not-a-comment = x",
		"BANG":      "!bang",
		"EMPTY":     "",
		"DB_URL":    "postgres://acme:pw@db/acme",
	}
	for i := range extra {
		env[fmt.Sprintf("KEY_%03d", i)] = strings.Repeat("v", 40)
	}
	return env
}

func BenchmarkRenderEnv(b *testing.B) {
	for _, size := range []struct {
		name  string
		extra int
	}{{"demo11", 0}, {"keys111", 100}} {
		env := benchEnv(size.extra)
		for _, f := range []render.Format{render.Dotenv, render.Shell, render.JSON} {
			b.Run(size.name+"/"+string(f), func(b *testing.B) {
				b.ReportAllocs()
				var n int
				for b.Loop() {
					out, err := render.Render(f, env)
					if err != nil {
						b.Fatal(err)
					}
					n = len(out)
				}
				b.SetBytes(int64(n))
			})
		}
	}
}
