//go:build cgo && linux && amd64

package sdke2e

import (
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	sdk "github.com/bitwarden/sdk-go"

	"github.com/hostd/broker/internal/upstream/smserver"
)

// hard are values that break naive quoting, seeded by the server.
var hard = map[string]string{
	"MULTI":   "line1\nline2",
	"QUOTES":  `he said "hi"`,
	"DOLLAR":  "$HOME and ${X}",
	"BACK":    `back\slash`,
	"ZEROS":   "007",
	"UNICODE": "ünïcødé 😀",
	"EMPTY":   "",
}

// sdkEnv keeps the SDK quiet and local: RUST_LOG=debug would print the
// client secret, and a proxy variable would divert 127.0.0.1.
func sdkEnv(t *testing.T) {
	t.Setenv("RUST_LOG", "")
	for _, k := range []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"} {
		t.Setenv(k, "")
	}
	t.Setenv("NO_PROXY", "127.0.0.1,localhost")
	t.Setenv("no_proxy", "127.0.0.1,localhost")
}

// newClient returns a real SDK client pointed at srv (both URLs set: a nil
// one would mean bitwarden.com), closed at the end of the test.
func newClient(t *testing.T, srv *smserver.Server) sdk.BitwardenClientInterface {
	t.Helper()
	api, identity := srv.APIURL(), srv.IdentityURL()
	c, err := sdk.NewBitwardenClient(&api, &identity)
	if err != nil {
		t.Fatalf("NewBitwardenClient: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// checkNoLeak fails if err's text contains any of the secrets.
func checkNoLeak(t *testing.T, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error text contains a secret (len %d)", len(s))
		}
	}
}

// compare reports differences between two key->value maps without printing
// values.
func compare(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			t.Errorf("%s: key %q missing", what, k)
		case g != w:
			t.Errorf("%s: key %q: value differs (got %d bytes, want %d bytes)", what, k, len(g), len(w))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected key %q", what, k)
		}
	}
}

func keysOf(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestRealSDK(t *testing.T) {
	sdkEnv(t)
	srv := smserver.New(smserver.Options{Logf: t.Logf})
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)

	org := srv.AddOrganization("acme")
	pRW := srv.AddProject(org, "app")           // read+write
	pRO := srv.AddProject(org, "shared")        // read only
	pHidden := srv.AddProject(org, "other-one") // not granted
	otherOrg := srv.AddOrganization("globex")
	otherProj := srv.AddProject(otherOrg, "globex-app")

	wantRW := map[string]string{}
	ids := map[string]string{} // key -> id
	for k, v := range hard {
		ids[k] = srv.AddSecret(org, pRW, k, v, "note of "+k)
		wantRW[k] = v
	}
	ids["SHARED_URL"] = srv.AddSecret(org, pRO, "SHARED_URL", "https://db.internal:5432/x?a=b&c=d", "")
	hiddenID := srv.AddSecret(org, pHidden, "HIDDEN", "nope", "")
	srv.AddSecret(otherOrg, otherProj, "FOREIGN", "nope", "")

	acct := srv.AddMachineAccount(org)
	srv.GrantWrite(acct, pRW)
	srv.GrantRead(acct, pRO)
	token, tokenID := srv.NewAccessToken(acct)

	visible := map[string]string{"SHARED_URL": "https://db.internal:5432/x?a=b&c=d"}
	for k, v := range wantRW {
		visible[k] = v
	}

	c := newClient(t, srv)
	state := filepath.Join(t.TempDir(), "state")
	if err := c.AccessTokenLogin(token, &state); err != nil {
		checkNoLeak(t, err, token)
		t.Fatalf("AccessTokenLogin: %v", err)
	}
	if got := srv.Stats().Logins; got != 1 {
		t.Errorf("logins after AccessTokenLogin = %d, want 1", got)
	}

	// Sync without a date: everything visible, byte-exact.
	syncResp, err := c.Secrets().Sync(org, nil)
	if err != nil {
		t.Fatalf("Sync(nil): %v", err)
	}
	if !syncResp.HasChanges {
		t.Errorf("Sync(nil).HasChanges = false, want true")
	}
	got := map[string]string{}
	for _, s := range syncResp.Secrets {
		got[s.Key] = s.Value
		if s.OrganizationID != org {
			t.Errorf("Sync: key %q organizationId = %q, want %q", s.Key, s.OrganizationID, org)
		}
		if s.ProjectID == nil || (*s.ProjectID != pRW && *s.ProjectID != pRO) {
			t.Errorf("Sync: key %q has projectId %v, want one of the granted projects", s.Key, s.ProjectID)
		}
		if s.Key != "SHARED_URL" && s.Note != "note of "+s.Key {
			t.Errorf("Sync: key %q: note differs", s.Key)
		}
		if s.CreationDate.IsZero() || s.RevisionDate.IsZero() {
			t.Errorf("Sync: key %q: zero dates", s.Key)
		}
	}
	compare(t, "Sync(nil)", got, visible)

	// List: ids and keys, no hidden or foreign secret.
	list, err := c.Secrets().List(org)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	listed := map[string]string{}
	for _, s := range list.Data {
		listed[s.Key] = s.ID
	}
	if g, w := keysOf(listed), keysOf(visible); strings.Join(g, ",") != strings.Join(w, ",") {
		t.Errorf("List keys = %v, want %v", g, w)
	}
	for k, id := range listed {
		if ids[k] != id {
			t.Errorf("List: key %q id = %s, want %s", k, id, ids[k])
		}
	}

	// GetByIDS of every visible id.
	var all []string
	for _, id := range listed {
		all = append(all, id)
	}
	byIDs, err := c.Secrets().GetByIDS(all)
	if err != nil {
		t.Fatalf("GetByIDS: %v", err)
	}
	got = map[string]string{}
	for _, s := range byIDs.Data {
		got[s.Key] = s.Value
	}
	compare(t, "GetByIDS", got, visible)

	// A hidden id is a 404, not a 401/403.
	if _, err := c.Secrets().GetByIDS([]string{hiddenID}); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("GetByIDS(hidden) error = %v, want a 404", err)
	}
	if _, err := c.Secrets().Get(hiddenID); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Get(hidden) error = %v, want a 404", err)
	}
	if _, err := c.Secrets().List(otherOrg); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("List(other org) error = %v, want a 404", err)
	}

	// Get one, byte-exact.
	one, err := c.Secrets().Get(ids["MULTI"])
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if one.Key != "MULTI" || one.Value != hard["MULTI"] {
		t.Errorf("Get(MULTI): key %q, value equal %v", one.Key, one.Value == hard["MULTI"])
	}

	// Projects.
	projects, err := c.Projects().List(org)
	if err != nil {
		t.Fatalf("Projects.List: %v", err)
	}
	names := map[string]string{}
	for _, p := range projects.Data {
		names[p.ID] = p.Name
	}
	compare(t, "Projects.List", names, map[string]string{pRW: "app", pRO: "shared"})
	if p, err := c.Projects().Get(pRW); err != nil || p.Name != "app" || p.OrganizationID != org {
		t.Errorf("Projects.Get(rw) = %+v, %v; want name app", p, err)
	}
	if _, err := c.Projects().Get(pHidden); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Projects.Get(hidden) error = %v, want a 404", err)
	}

	// Create with the write grant: every hard value except the empty one,
	// which the SDK itself refuses.
	for k, v := range hard {
		key := "NEW_" + k
		if v == "" {
			before := srv.Stats().Requests
			if _, err := c.Secrets().Create(key, v, "", org, []string{pRW}); err == nil {
				t.Errorf("Create(%s, empty value) succeeded, want the SDK to refuse it", key)
			}
			if after := srv.Stats().Requests; after != before {
				t.Errorf("Create(empty value) sent %d requests, want 0", after-before)
			}
			continue
		}
		s, err := c.Secrets().Create(key, v, "made by sdk", org, []string{pRW})
		if err != nil {
			t.Fatalf("Create(%s): %v", key, err)
		}
		if s.Key != key || s.Value != v || s.Note != "made by sdk" || s.ProjectID == nil || *s.ProjectID != pRW {
			t.Errorf("Create(%s): response differs", key)
		}
		wantRW[key] = v
	}
	compare(t, "server after Create", srv.SecretsOf(org, pRW), wantRW)
	if got, want := srv.Stats().Writes, int64(len(hard)-1); got != want {
		t.Errorf("Writes = %d, want %d", got, want)
	}
	if _, err := c.Secrets().Create("RO_KEY", "v", "", org, []string{pRO}); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("Create in read-only project error = %v, want a 403", err)
	}
	if _, err := c.Secrets().Create("HIDDEN_KEY", "v", "", org, []string{pHidden}); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Create in hidden project error = %v, want a 404", err)
	}
	if got := srv.SecretsOf(org, pHidden); len(got) != 1 {
		t.Errorf("hidden project has %d secrets, want 1", len(got))
	}

	// Update and Delete through the SDK.
	upd, err := c.Secrets().Update(ids["ZEROS"], "ZEROS", "0070", "updated", org, []string{pRW})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if upd.Value != "0070" || !upd.RevisionDate.After(upd.CreationDate) {
		t.Errorf("Update: value equal %v, revision after creation %v", upd.Value == "0070", upd.RevisionDate.After(upd.CreationDate))
	}
	wantRW["ZEROS"] = "0070"
	newID := listedAfterCreate(t, c, org, "NEW_BACK")
	del, err := c.Secrets().Delete([]string{newID})
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if len(del.Data) != 1 || del.Data[0].ID != newID || del.Data[0].Error != nil {
		t.Errorf("Delete response = %+v, want one entry without error", del.Data)
	}
	delete(wantRW, "NEW_BACK")
	compare(t, "server after Update/Delete", srv.SecretsOf(org, pRW), wantRW)

	// Sync with a date after the last change: no changes, nil secrets, one request.
	since := time.Now()
	srv.ResetStats()
	syncResp, err = c.Secrets().Sync(org, &since)
	if err != nil {
		t.Fatalf("Sync(since): %v", err)
	}
	if syncResp.HasChanges || syncResp.Secrets != nil {
		t.Errorf("Sync(since) = hasChanges %v, %d secrets; want false, nil", syncResp.HasChanges, len(syncResp.Secrets))
	}
	if st := srv.Stats(); st.Requests != 1 || st.Logins != 0 || st.ByRoute["GET /api/organizations/{org}/secrets/sync"] != 1 {
		t.Errorf("Sync(since) stats = %+v, want one sync request and no login", st)
	}
	// A change to a hidden project stays invisible; one to a visible one shows.
	if err := srv.UpdateSecret(hiddenID, "still hidden"); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Secrets().Sync(org, &since); err != nil || r.HasChanges {
		t.Errorf("Sync after hidden change = %v, %v; want no changes", r != nil && r.HasChanges, err)
	}
	if err := srv.UpdateSecret(ids["SHARED_URL"], "changed"); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Secrets().Sync(org, &since); err != nil || !r.HasChanges || len(r.Secrets) != len(wantRW)+1 {
		t.Errorf("Sync after visible change: err %v, want hasChanges with %d secrets", err, len(wantRW)+1)
	}

	// Faults as the SDK sees them.
	srv.InjectFault(smserver.Fault{Route: "api", Status: 429, RetryAfter: time.Second})
	if _, err := c.Secrets().List(org); err == nil || !strings.Contains(err.Error(), "429") {
		t.Errorf("List under a 429 fault error = %v, want a 429", err)
	}
	srv.InjectFault(smserver.Fault{Route: "api", TamperMAC: true})
	if _, err := c.Secrets().Get(ids["MULTI"]); err == nil || !strings.Contains(err.Error(), "MAC") {
		t.Errorf("Get under a TamperMAC fault error = %v, want a MAC error", err)
	}
	srv.InjectFault(smserver.Fault{Route: "api", BadJSON: true})
	if _, err := c.Secrets().List(org); err == nil {
		t.Errorf("List under a BadJSON fault succeeded")
	}
	srv.InjectFault(smserver.Fault{Route: "api", Truncate: true})
	if _, err := c.Secrets().List(org); err == nil {
		t.Errorf("List under a Truncate fault succeeded")
	}
	if _, err := c.Secrets().List(org); err != nil {
		t.Errorf("List after the faults: %v", err)
	}

	// A second client with the same state file logs in without the identity endpoint.
	c2 := newClient(t, srv)
	srv.ResetStats()
	if err := c2.AccessTokenLogin(token, &state); err != nil {
		t.Fatalf("AccessTokenLogin from state file: %v", err)
	}
	if _, err := c2.Secrets().List(org); err != nil {
		t.Errorf("List after state-file login: %v", err)
	}
	if got := srv.Stats().Logins; got != 0 {
		t.Errorf("logins with a valid state file = %d, want 0", got)
	}

	// Down and up again on the same port: state kept, JWT still valid.
	addr := srv.Addr()
	srv.Stop()
	if _, err := c.Secrets().List(org); err == nil {
		t.Errorf("List while the server is stopped succeeded")
	}
	if err := srv.StartAt(addr); err != nil {
		t.Fatalf("StartAt(%s): %v", addr, err)
	}
	if _, err := c.Secrets().List(org); err != nil {
		t.Errorf("List after StartAt: %v", err)
	}

	// Revocation: live JWTs get 401, a new login gets invalid_client.
	srv.RevokeAccessToken(tokenID)
	if _, err := c.Secrets().List(org); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("List with a revoked token error = %v, want a 401", err)
	}
	c3 := newClient(t, srv)
	err = c3.AccessTokenLogin(token, nil)
	if err == nil || !strings.Contains(err.Error(), "invalid_client") {
		t.Errorf("AccessTokenLogin with a revoked token error = %v, want invalid_client", err)
	}
	checkNoLeak(t, err, token)

	// A wrong 16-byte key: the payload does not decrypt.
	tok2, _ := srv.NewAccessToken(acct)
	bad := tok2[:strings.IndexByte(tok2, ':')] + ":AAAAAAAAAAAAAAAAAAAAAA=="
	c4 := newClient(t, srv)
	if err := c4.AccessTokenLogin(bad, nil); err == nil || !strings.Contains(err.Error(), "MAC") {
		t.Errorf("AccessTokenLogin with a wrong key error = %v, want a MAC error", err)
	}
	if err := c4.AccessTokenLogin(tok2, nil); err != nil {
		t.Errorf("AccessTokenLogin with the second token: %v", err)
	}
}

// listedAfterCreate returns the id of key from List.
func listedAfterCreate(t *testing.T, c sdk.BitwardenClientInterface, org, key string) string {
	t.Helper()
	list, err := c.Secrets().List(org)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, s := range list.Data {
		if s.Key == key {
			return s.ID
		}
	}
	t.Fatalf("List: key %q not found", key)
	return ""
}

// TestRealSDKRenewal: with expires_in at or under 300 s the SDK logs in
// again before every API call; well above it, once. Both show that
// Options.TokenLifetime reaches the SDK as expires_in.
func TestRealSDKRenewal(t *testing.T) {
	sdkEnv(t)
	tests := []struct {
		lifetime   time.Duration
		wantLogins int64
	}{
		{time.Hour, 1},
		{301 * time.Second, 1},
		{60 * time.Second, 4},
	}
	for _, tc := range tests {
		t.Run(tc.lifetime.String(), func(t *testing.T) {
			srv := smserver.New(smserver.Options{TokenLifetime: tc.lifetime})
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Close)
			org := srv.AddOrganization("o")
			p := srv.AddProject(org, "p")
			srv.AddSecret(org, p, "K", "v", "")
			acct := srv.AddMachineAccount(org)
			srv.GrantRead(acct, p)
			token, _ := srv.NewAccessToken(acct)
			c := newClient(t, srv)
			if err := c.AccessTokenLogin(token, nil); err != nil {
				t.Fatalf("AccessTokenLogin: %v", err)
			}
			for i := 0; i < 3; i++ {
				if _, err := c.Secrets().List(org); err != nil {
					t.Fatalf("List: %v", err)
				}
			}
			if got := srv.Stats().Logins; got != tc.wantLogins {
				t.Errorf("logins = %d, want %d", got, tc.wantLogins)
			}
		})
	}
}
