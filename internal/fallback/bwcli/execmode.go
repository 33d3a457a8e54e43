package bwcli

import (
	"context"
	"regexp"

	"github.com/hostd/broker/internal/fetch"
)

// sessionKeyRE matches a bw session key (base64 of 64 bytes).
var sessionKeyRE = regexp.MustCompile(`^[A-Za-z0-9+/]{40,200}={0,2}$`)

// execVault drives a data dir with one bw process per step. The session key
// lives only in this value and in the children's environments.
type execVault struct {
	b   *Backend
	d   *dataDir
	key string // session key of this call's unlock
	// faulted: the unlock failed or was killed, or it left no
	// __PROTECTED__ entry in data.json (another bw layout); the lock is then
	// verified by bw itself with the session key, not from data.json.
	faulted bool
}

func (v *execVault) session() []string { return []string{"BW_SESSION=" + v.key} }

func (v *execVault) status(ctx context.Context) (bwStatus, error) {
	if !hasState(v.d) {
		return bwStatus{Status: "unauthenticated"}, nil
	}
	resp, err := v.b.run(ctx, v.d, "status", nil, "status")
	if err != nil {
		return bwStatus{}, err
	}
	var st bwStatus
	if err := resp.template(&st); err != nil {
		return bwStatus{}, &stepError{step: "status", reason: reasonOutput, exit: 0, err: err}
	}
	return st, nil
}

func (v *execVault) stopForLogin() {}

func (v *execVault) unlock(ctx context.Context, password fetch.Secret) error {
	v.d.needsLock = true
	resp, err := v.b.run(ctx, v.d, "unlock", []string{"BW_PASSWORD=" + password.Reveal()},
		"unlock", "--passwordenv", "BW_PASSWORD")
	if resp != nil && resp.Success {
		// Keep the key even when the step failed after printing it: the
		// lock is verified with it.
		if k := resp.raw(); sessionKeyRE.MatchString(k) {
			v.key = k
		}
	}
	if err != nil {
		v.faulted = true
		return err
	}
	if v.key == "" {
		return &stepError{step: "unlock", reason: reasonOutput, exit: 0}
	}
	if m := readState(v.d); m == nil || !hasProtectedKey(m) {
		// The data.json check after the lock would prove nothing.
		v.faulted = true
	}
	return nil
}

func (v *execVault) sync(ctx context.Context, _ fetch.Secret) error {
	// Each process reads the data dir afresh: a sync that downloaded
	// changes needs no second unlock here.
	_, err := v.b.run(ctx, v.d, "sync", v.session(), "sync")
	if err == nil {
		v.d.freshRead = false
	}
	return err
}

// refresh locks and unlocks again (a new session key), for a list that
// looked incomplete.
func (v *execVault) refresh(ctx context.Context, password fetch.Secret) error {
	v.b.nRefreshes.Add(1)
	if _, err := v.b.run(ctx, v.d, "lock", nil, "lock"); err != nil && reasonOf(err) != reasonNotLoggedIn {
		return err
	}
	return v.unlock(ctx, password)
}

func (v *execVault) collections(ctx context.Context, org string) ([]bwCollection, error) {
	resp, err := v.b.run(ctx, v.d, "list collections", v.session(), "list", "collections", "--organizationid", org)
	if err != nil {
		return nil, err
	}
	var colls []bwCollection
	if err := resp.list(&colls); err != nil {
		return nil, &stepError{step: "list collections", reason: reasonOutput, exit: 0, err: err}
	}
	return colls, nil
}

func (v *execVault) items(ctx context.Context, org, coll string) ([]bwItem, error) {
	resp, err := v.b.run(ctx, v.d, "list items", v.session(), "list", "items", "--collectionid", coll, "--organizationid", org)
	if err != nil {
		return nil, err
	}
	var items []bwItem
	if err := resp.list(&items); err != nil {
		return nil, &stepError{step: "list items", reason: reasonOutput, exit: 0, err: err}
	}
	return items, nil
}

// lock runs `bw lock`, then checks that it took: normally from data.json
// (no session-wrapped user key left), and after a failed unlock with `bw
// status` and this call's session key, which must be refused (plain status
// says "locked" even while a key works).
func (v *execVault) lock(ctx context.Context) (bool, error) {
	if !v.d.needsLock && v.key == "" {
		return false, nil
	}
	if _, err := v.b.run(ctx, v.d, "lock", nil, "lock"); err != nil && reasonOf(err) != reasonNotLoggedIn {
		return false, err
	}
	if v.key != "" {
		// bw keeps the unlocked user key, wrapped by the session key, in
		// data.json under a __PROTECTED__ entry that unlock writes and lock
		// removes; without it the session key opens nothing. Reading that
		// saves a bw process per call. After a failed or killed unlock, an
		// unlock that left no such entry, or when data.json cannot be read,
		// bw itself is asked with the key.
		if m := readState(v.d); m != nil && !v.faulted {
			if hasProtectedKey(m) {
				return true, nil
			}
			v.d.needsLock = false
			return false, nil
		}
		resp, err := v.b.run(ctx, v.d, "status", v.session(), "status")
		if err != nil {
			return false, err
		}
		var st bwStatus
		if err := resp.template(&st); err != nil {
			return false, &stepError{step: "status", reason: reasonOutput, exit: 0, err: err}
		}
		if st.Status == "unlocked" {
			return true, nil
		}
	}
	v.d.needsLock = false
	return false, nil
}
