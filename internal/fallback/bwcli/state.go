package bwcli

import (
	"crypto/sha256"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
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

// readState reads and parses bw's data.json, bounded. It returns nil when
// the file is missing, too large or not a JSON object (bw may be rewriting
// it).
func readState(d *dataDir) map[string]json.RawMessage {
	f, err := os.Open(stateFile(d))
	if err != nil {
		return nil
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil || len(data) > maxStateFile {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(data, &m) != nil || m == nil {
		return nil
	}
	return m
}

// stateSnapshot is what a sync is judged by: bw's stored state before and
// after it.
type stateSnapshot struct {
	// fp hashes the state except the entries a sync that downloaded nothing
	// rewrites (its last-sync time); "" when the state cannot be read.
	fp string
	// lastSync is the stored last-sync entries; every sync, even one that
	// downloaded nothing, rewrites them.
	lastSync string
}

// snapshotState reads bw's stored state for a before/after comparison.
func snapshotState(d *dataDir) stateSnapshot {
	m := readState(d)
	if m == nil {
		return stateSnapshot{}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	var last strings.Builder
	for _, k := range keys {
		if isVolatileStateKey(k) {
			last.WriteString(k)
			last.WriteByte(0)
			last.Write(m[k])
			last.WriteByte(0)
			continue
		}
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(m[k])
		h.Write([]byte{0})
	}
	return stateSnapshot{fp: string(h.Sum(nil)), lastSync: last.String()}
}

// stateFingerprint hashes bw's stored state except the entries a sync that
// downloaded nothing rewrites (its last-sync time), so that a sync that
// downloaded changes shows as a different fingerprint. It returns "" when
// the state cannot be read; callers then assume a change.
func stateFingerprint(d *dataDir) string { return snapshotState(d).fp }

// syncChanged reports whether a sync must be followed by a fresh unlock
// before the collection is read: the state changed beyond its last-sync
// time, or it cannot be read, or the sync did not (yet) rewrite its
// last-sync time, so the stored state proves nothing.
func syncChanged(before, after stateSnapshot) bool {
	return before.fp == "" || after.fp == "" || before.fp != after.fp ||
		after.lastSync == "" || after.lastSync == before.lastSync
}

// isVolatileStateKey reports whether a data.json entry changes on a sync that
// downloaded nothing.
func isVolatileStateKey(k string) bool {
	return strings.Contains(strings.ToLower(k), "lastsync")
}

// storedCipher is the part of a cipher in bw's data.json that is stored in
// clear: enough to count a collection's items without decrypting anything.
type storedCipher struct {
	OrganizationID string          `json:"organizationId"`
	CollectionIDs  []string        `json:"collectionIds"`
	DeletedDate    json.RawMessage `json:"deletedDate"`
	ArchivedDate   json.RawMessage `json:"archivedDate"`
}

// ciphersKeySuffix ends the data.json key of an account's ciphers
// ("user_<account id>_ciphers_ciphers" in bw 2026.9.0).
const ciphersKeySuffix = "_ciphers_ciphers"

// storedCount counts the ciphers bw has stored for the organization's
// collection that `bw list items` shows (not in the trash, not archived),
// from data.json of the dir's active account, without decrypting. ok is
// false when that cannot be told (no state, a torn file, an unknown layout).
func storedCount(d *dataDir, org, coll string) (n int, ok bool) {
	return countStored(readState(d), org, coll)
}

// countStored is storedCount on parsed state.
func countStored(m map[string]json.RawMessage, org, coll string) (n int, ok bool) {
	var active string
	if json.Unmarshal(m["global_account_activeAccountId"], &active) != nil || active == "" {
		return 0, false
	}
	raw, found := m["user_"+active+ciphersKeySuffix]
	if !found {
		return 0, false
	}
	var ciphers map[string]storedCipher
	if json.Unmarshal(raw, &ciphers) != nil {
		return 0, false
	}
	for _, c := range ciphers {
		if c.OrganizationID == org && slices.Contains(c.CollectionIDs, coll) &&
			isNull(c.DeletedDate) && isNull(c.ArchivedDate) {
			n++
		}
	}
	return n, true
}

// isNull reports whether a JSON member is absent or null.
func isNull(v json.RawMessage) bool {
	return len(v) == 0 || string(v) == "null"
}

// hasProtectedKey reports whether bw's state holds a session-wrapped user
// key (a "__PROTECTED__" entry), which exists from an unlock until the next
// lock: the vault is unlocked for whoever has the session key.
func hasProtectedKey(m map[string]json.RawMessage) bool {
	for k := range m {
		if strings.HasPrefix(k, "__PROTECTED__") {
			return true
		}
	}
	return false
}
