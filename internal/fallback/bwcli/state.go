package bwcli

import (
	"crypto/sha256"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// maxStateFile bounds the read of bw's data.json.
const maxStateFile = 64 << 20

// stateFile is bw's state in a data dir.
func stateFile(d *dataDir) string { return filepath.Join(d.path, "data.json") }

// hasState reports whether bw has written state in the dir (a dir without
// it has never been logged in).
func hasState(d *dataDir) bool {
	_, err := os.Stat(stateFile(d))
	return err == nil
}

// stateFingerprint hashes bw's stored state except the entries a sync that
// downloaded nothing rewrites (its last-sync time), so that a sync that
// downloaded changes shows as a different fingerprint. It returns "" when
// the state cannot be read; callers then assume a change.
func stateFingerprint(d *dataDir) string {
	f, err := os.Open(stateFile(d))
	if err != nil {
		return ""
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil || len(data) > maxStateFile {
		return ""
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(data, &m) != nil {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if isVolatileStateKey(k) {
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(m[k])
		h.Write([]byte{0})
	}
	return string(h.Sum(nil))
}

// isVolatileStateKey reports whether a data.json entry changes on a sync that
// downloaded nothing.
func isVolatileStateKey(k string) bool {
	return strings.Contains(strings.ToLower(k), "lastsync")
}
