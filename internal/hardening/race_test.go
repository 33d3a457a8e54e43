//go:build race

package hardening

// raceEnabled is true when the suite runs under -race; the broker binary is
// then built with -race too.
const raceEnabled = true
