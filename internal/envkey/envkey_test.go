package envkey

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for _, tt := range []struct {
		k    string
		want bool
	}{
		{"A", true}, {"_", true}, {"a_b9", true}, {"DATABASE_URL", true},
		{"", false}, {"9A", false}, {"A-B", false}, {"A B", false}, {"Ä", false}, {"A=B", false},
		{"A\n", false}, {"A\x00", false}, {strings.Repeat("A", MaxLen), true}, {strings.Repeat("A", MaxLen+1), false},
	} {
		if got := Valid(tt.k); got != tt.want {
			t.Errorf("Valid(%q) = %v, want %v", tt.k, got, tt.want)
		}
	}
}

func TestQuote(t *testing.T) {
	if got := Quote("DB_URL"); got != `"DB_URL"` {
		t.Errorf("Quote(DB_URL) = %s", got)
	}
	long := strings.Repeat("k", 100)
	if got := Quote(long); !strings.HasPrefix(got, `"`+strings.Repeat("k", 64)+`"…`) || !strings.HasSuffix(got, "(100 bytes)") {
		t.Errorf("Quote(100 bytes) = %s, want it cut at 64 with the length", got)
	}
	if got := Quote("a\nb"); got != `"a\nb"` {
		t.Errorf("Quote escapes control characters: got %s", got)
	}
}
