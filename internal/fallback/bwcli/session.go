package bwcli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hostd/broker/internal/fetch"
)

// loginState is what the backend knows about a data dir's login.
type loginState int

const (
	stateUnknown   loginState = iota // not looked at yet in this process
	stateLoggedIn                    // bw holds a login (API key) for the dir
	stateLoggedOut                   // bw is not logged in
)

// dataDir is one bw data dir (one credential set). Every field except the
// constants is guarded by lock: calls on a dir are serialized.
type dataDir struct {
	path string        // BITWARDENCLI_APPDATA_DIR
	name string        // last path element, safe to log
	lock chan struct{} // one slot: the dir's mutex, waitable with a context

	state   loginState
	loginFP string // fingerprint of the API key bw was logged in with

	// A refused API key, remembered for loginRetryDelay.
	failFP  string
	failAt  time.Time
	failErr error

	// needsLock reports whether the vault may hold an unlock that no verified
	// lock has undone yet (true until the first verified lock: a previous
	// broker may have died mid-call).
	needsLock bool

	// freshRead: the next call reads the collection only after a fresh
	// lock → unlock, whatever its sync downloaded. Set by a login and by a
	// serve start: their first unlock runs syncs of bw's own (the key-id
	// migration), after which bw serve can list an incomplete vault.
	freshRead bool

	colls map[string]string // organization id + "\x00" + collection name → id

	serve       *serveProc // serve mode: the running bw serve, if any
	serveStarts int
}

// vault is one call's view of a data dir, in serve or exec mode.
type vault interface {
	// status returns bw's status; it may need no unlock.
	status(ctx context.Context) (bwStatus, error)
	// stopForLogin makes sure no bw process holds the dir's state in memory
	// before a login or logout changes it on disk.
	stopForLogin()
	unlock(ctx context.Context, password fetch.Secret) error
	// sync brings the unlocked vault up to date with a non-forced sync
	// (a revision check; a forced sync would be a login at the upstream)
	// and leaves it unlocked and readable.
	sync(ctx context.Context, password fetch.Secret) error
	// refresh locks and unlocks again so that the next list reads the
	// stored vault whole.
	refresh(ctx context.Context, password fetch.Secret) error
	collections(ctx context.Context, org string) ([]bwCollection, error)
	items(ctx context.Context, org, coll string) ([]bwItem, error)
	// lock locks the vault and verifies the lock; it reports whether the
	// vault was found still unlocked.
	lock(ctx context.Context) (stillUnlocked bool, err error)
}

// call runs one Fetch or Check: it serializes on the tenant's data dir, takes
// a slot of the global semaphore, runs the session and maps the outcome to a
// *fetch.Error.
func (b *Backend) call(ctx context.Context, t fetch.Tenant, read func(context.Context, vault, *dataDir) error) error {
	b.nCalls.Add(1)
	if err := checkTenant(t); err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return fetch.NewError(fetch.KindUnavailable, t.Name, "the broker is shutting down; retry", errShutdown)
	}
	b.calls.Add(1)
	b.mu.Unlock()
	defer b.calls.Done()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(b.shutdown, func() { cancel(errShutdown) })()

	d, err := b.dir(t)
	if err != nil {
		return fetch.NewError(fetch.KindConfig, t.Name, "cannot prepare the bw data dir under the state dir; check its ownership and permissions", err)
	}
	if err := acquire(ctx, d.lock); err != nil {
		return b.ctxError(ctx, t, "waiting for the tenant's bw data dir")
	}
	defer release(d.lock)
	if err := acquire(ctx, b.sem); err != nil {
		return b.ctxError(ctx, t, "waiting for a free bw slot")
	}
	defer release(b.sem)

	start := time.Now()
	err = b.session(ctx, d, t, read)
	if err != nil && ctx.Err() != nil {
		err = b.ctxError(ctx, t, "running bw")
	}
	err = toFetchError(t.Name, err)
	if err != nil {
		b.log.Warn("bw call failed", "tenant", t.Name, "dir", d.name, "kind", fetch.KindOf(err).String(),
			"duration", time.Since(start), "err", err)
	} else {
		b.log.Debug("bw call done", "tenant", t.Name, "dir", d.name, "duration", time.Since(start))
	}
	return err
}

// session is the body of a call on a locked data dir. The lock runs on every
// path, under its own deadline, even when ctx is done.
func (b *Backend) session(ctx context.Context, d *dataDir, t fetch.Tenant, read func(context.Context, vault, *dataDir) error) error {
	v := b.newVault(d)
	defer b.lockAfter(ctx, d, v, t)

	if err := b.ensureLogin(ctx, d, v, t); err != nil {
		return err
	}
	err := v.unlock(ctx, t.Password)
	if reasonOf(err) == reasonNotLoggedIn && ctx.Err() == nil {
		// The login is gone (expired, or revoked upstream): log in again,
		// once.
		b.log.Info("bw login lost; logging in again", "tenant", t.Name, "dir", d.name)
		d.state = stateLoggedOut
		if err := b.ensureLogin(ctx, d, v, t); err != nil {
			return err
		}
		err = v.unlock(ctx, t.Password)
	}
	if err != nil {
		return err
	}
	if err := v.sync(ctx, t.Password); err != nil {
		return err
	}
	return read(ctx, v, d)
}

// lockAfter locks the vault with a deadline of its own, derived from ctx
// without its cancellation, and reports a vault still unlocked loudly.
func (b *Backend) lockAfter(ctx context.Context, d *dataDir, v vault, t fetch.Tenant) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.LockTimeout)
	defer cancel()
	stillUnlocked, err := v.lock(lctx)
	if stillUnlocked {
		b.nUnlocked.Add(1)
		b.log.Error("bw vault found unlocked after lock", "tenant", t.Name, "dir", d.name)
	}
	if err != nil {
		b.log.Error("bw lock failed", "tenant", t.Name, "dir", d.name, "err", err)
	}
}

// ensureLogin makes sure bw holds a login made with t's API key, logging in
// only when needed: once per data dir, again when the key changed or the
// login was lost.
func (b *Backend) ensureLogin(ctx context.Context, d *dataDir, v vault, t fetch.Tenant) error {
	fp := b.fingerprint(t)
	if d.state == stateLoggedIn && d.loginFP == fp {
		return nil
	}
	if d.failErr != nil && d.failFP == fp && time.Since(d.failAt) < loginRetryDelay {
		return d.failErr
	}
	if d.state == stateUnknown {
		st, err := v.status(ctx)
		if err != nil {
			return err
		}
		switch {
		case st.Status == "unauthenticated":
			d.state = stateLoggedOut
		case sameServer(st.ServerURL, b.cfg.ServerURL):
			// Logged in by an earlier broker run; bw renews the token with
			// the key it stored and we cannot compare that key: adopt it.
			d.state, d.loginFP = stateLoggedIn, fp
			return nil
		default:
			d.state = stateLoggedIn // to another server: log out first
		}
	}

	v.stopForLogin()
	if d.state == stateLoggedIn {
		if _, err := b.run(ctx, d, "logout", nil, "logout"); err != nil && reasonOf(err) != reasonNotLoggedIn {
			return err
		}
		d.state = stateLoggedOut
	}
	if _, err := b.run(ctx, d, "config server", nil, "config", "server", "--", b.cfg.ServerURL); err != nil &&
		reasonOf(err) != reasonLoggedIn {
		return err
	}
	b.nLogins.Add(1)
	_, err := b.run(ctx, d, "login", []string{
		"BW_CLIENTID=" + t.ClientID.Reveal(),
		"BW_CLIENTSECRET=" + t.ClientSecret.Reveal(),
	}, "login", "--apikey")
	switch r := reasonOf(err); {
	case err == nil, r == reasonLoggedIn:
	case r == reasonBadAPIKey:
		d.failFP, d.failAt, d.failErr = fp, time.Now(), err
		return err
	default:
		return err
	}
	d.state, d.loginFP = stateLoggedIn, fp
	d.failErr = nil
	d.freshRead = true
	b.log.Info("bw logged in", "tenant", t.Name, "dir", d.name)
	return nil
}

// sameServer reports whether bw's configured server is ours.
func sameServer(got, want string) bool {
	return strings.TrimRight(got, "/") == strings.TrimRight(want, "/")
}

// readCollection lists the tenant's collection and builds its env.
func (b *Backend) readCollection(ctx context.Context, v vault, d *dataDir, t fetch.Tenant) (fetch.Env, error) {
	name := collectionName(t)
	key := t.OrganizationID + "\x00" + name
	id, cached := d.colls[key]
	if !cached {
		var err error
		if id, err = b.resolveCollection(ctx, v, t, name); err != nil {
			return nil, err
		}
		d.colls[key] = id
	}
	items, err := b.listComplete(ctx, v, d, t, id)
	if err != nil {
		return nil, err
	}
	if cached && countInCollection(items, t.OrganizationID, id) == 0 {
		// The collection may have been deleted and re-created under the
		// same name: resolve the name again.
		delete(d.colls, key)
		nid, err := b.resolveCollection(ctx, v, t, name)
		if err != nil {
			return nil, err
		}
		d.colls[key] = nid
		if nid != id {
			id = nid
			if items, err = b.listComplete(ctx, v, d, t, id); err != nil {
				return nil, err
			}
		}
	}
	env, ignored, err := buildEnv(t.Name, t.OrganizationID, id, items)
	if err != nil {
		return nil, err
	}
	if ignored > 0 {
		b.log.Debug("bw items of other types ignored", "tenant", t.Name, "count", ignored)
	}
	return env, nil
}

// listComplete lists the collection's items and makes sure the list is
// whole: bw can answer an empty or partial list (its decryption fails
// silently while its state is being replaced, protocols §10). The list is
// compared with the items bw stores for the collection in data.json
// (counted without decrypting). A list with fewer, or an empty list when the
// stored count cannot be told, is read again after a fresh unlock; if it is
// still incomplete the call fails with KindUnavailable rather than serve a
// partial env. An empty collection gives an empty list and passes.
func (b *Backend) listComplete(ctx context.Context, v vault, d *dataDir, t fetch.Tenant, id string) ([]bwItem, error) {
	org := t.OrganizationID
	items, err := v.items(ctx, org, id)
	if err != nil {
		return nil, err
	}
	listed := countInCollection(items, org, id)
	stored, known := storedCount(d, org, id)
	if !listSuspect(listed, stored, known) {
		return items, nil
	}
	b.nRereads.Add(1)
	b.log.Warn("bw listed an incomplete collection; reading it again after a fresh unlock",
		"tenant", t.Name, "dir", d.name, "listed", listed, "stored", storedAttr(stored, known))
	if err := v.refresh(ctx, t.Password); err != nil {
		return nil, err
	}
	if items, err = v.items(ctx, org, id); err != nil {
		return nil, err
	}
	listed = countInCollection(items, org, id)
	stored, known = storedCount(d, org, id)
	if !listIncomplete(listed, stored, known, countInOrg(items, org)) {
		return items, nil
	}
	b.nIncomplete.Add(1)
	b.log.Error("bw listed an incomplete collection again after a fresh unlock; not serving it",
		"tenant", t.Name, "dir", d.name, "listed", listed, "stored", storedAttr(stored, known))
	return nil, fetch.NewError(fetch.KindUnavailable, t.Name, "the bw CLI returned an incomplete vault; retry",
		fmt.Errorf("bw list items: %d of the collection's items listed, %s stored", listed, storedAttr(stored, known)))
}

// listSuspect reports whether a first list of a collection must be read
// again: it holds fewer items than bw stores for the collection, or, when
// the stored count is unknown, none.
func listSuspect(listed, stored int, known bool) bool {
	if known {
		return listed < stored
	}
	return listed == 0
}

// listIncomplete judges a list read after a fresh unlock: fewer items than
// bw stores is incomplete; with the stored count unknown, an empty list is
// trusted only when the answer still held other items of the organization
// (bw decrypted the vault; the collection is empty). bw's list filter
// matches the organization or the collection, so the answer holds the
// whole organization.
func listIncomplete(listed, stored int, known bool, inOrg int) bool {
	if known {
		return listed < stored
	}
	return listed == 0 && inOrg == 0
}

// storedAttr is a stored count for logs and errors.
func storedAttr(stored int, known bool) string {
	if !known {
		return "unknown"
	}
	return fmt.Sprint(stored)
}

// resolveCollection returns the id of the organization's collection name.
func (b *Backend) resolveCollection(ctx context.Context, v vault, t fetch.Tenant, name string) (string, error) {
	colls, err := v.collections(ctx, t.OrganizationID)
	if err != nil {
		return "", err
	}
	var ids []string
	for _, c := range colls {
		if c.OrganizationID == t.OrganizationID && c.Name == name && uuidRE.MatchString(c.ID) {
			ids = append(ids, c.ID)
		}
	}
	switch len(ids) {
	case 1:
		return ids[0], nil
	case 0:
		return "", fetch.NewError(fetch.KindConfig, t.Name, fmt.Sprintf(
			"collection %s not found in the organization, or not visible to this account; create it, "+
				"give the account access, or fix the tenant's collection in the policy", quote(name)), fetch.ErrNotResolved)
	default:
		return "", fetch.NewError(fetch.KindConfig, t.Name, fmt.Sprintf(
			"%d collections of the organization are named %s; rename all but one upstream", len(ids), quote(name)), fetch.ErrNotResolved)
	}
}

// quote quotes a name for a message, truncated.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return fmt.Sprintf("%q…", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

// acquire takes a slot of sem, or fails when ctx is done first.
func acquire(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func release(sem chan struct{}) { <-sem }

// ctxError maps a done ctx to a *fetch.Error: shutdown, caller timeout or
// cancellation.
func (b *Backend) ctxError(ctx context.Context, t fetch.Tenant, doing string) error {
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errShutdown):
		return fetch.NewError(fetch.KindUnavailable, t.Name, "the broker is shutting down; retry", fmt.Errorf("%s: %w", doing, errShutdown))
	case errors.Is(cause, context.DeadlineExceeded):
		return fetch.NewError(fetch.KindTimeout, t.Name, "the request's deadline passed while bw was running; retry with a longer timeout", fmt.Errorf("%s: %w", doing, context.DeadlineExceeded))
	default:
		return fetch.NewError(fetch.KindCanceled, t.Name, "the request was canceled", fmt.Errorf("%s: %w", doing, context.Canceled))
	}
}
