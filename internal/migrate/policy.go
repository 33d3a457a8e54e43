package migrate

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/state"
)

// SwitchTenant returns a copy of p in which tenant uses backend "sm" with
// organization org, project_ids [project] and access_token_env tokenEnv.
// The result is validated as a whole (Marshal), so a name that clashes with
// another tenant's credentials is refused here.
func SwitchTenant(p *scope.Policy, tenant, org, project, tokenEnv string) (*scope.Policy, []byte, error) {
	if _, ok := p.Tenants[tenant]; !ok {
		return nil, nil, fmt.Errorf("tenant %q is not in the policy", tenant)
	}
	np := *p
	np.Tenants = make(map[string]scope.Tenant, len(p.Tenants))
	for k, v := range p.Tenants {
		np.Tenants[k] = v
	}
	np.Tenants[tenant] = scope.Tenant{
		Backend:        scope.BackendSM,
		OrganizationID: org,
		ProjectIDs:     []string{project},
		AccessTokenEnv: tokenEnv,
	}
	data, err := np.Marshal()
	if err != nil {
		return nil, nil, err
	}
	return &np, data, nil
}

// PolicyWrite is the outcome of WritePolicy.
type PolicyWrite struct {
	// Path is the file written: the policy path, or the file its symbolic
	// link points to.
	Path string
	// Backup is the copy of the previous policy, beside Path.
	Backup string
	// Linked reports whether the policy path was a symbolic link.
	Linked bool
}

// WritePolicy replaces the policy file at path with data, atomically (temp
// file, fsync, rename), keeping its mode, after copying the current file to
// path.bak-<UTC time> beside it. before is the content the change was based
// on: if the file no longer holds it (someone edited it meanwhile), nothing
// is written. A symbolic link is followed and its target rewritten.
func WritePolicy(path string, before, data []byte, now time.Time) (*PolicyWrite, error) {
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %v", path, err)
	}
	w := &PolicyWrite{Path: target, Linked: target != filepath.Clean(path)}
	fi, err := os.Stat(target)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %v", target, err)
	}
	cur, err := ReadPolicyBytes(target)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(cur, before) {
		return nil, fmt.Errorf("policy %s changed while the migration ran; nothing written, run broker migrate again", target)
	}
	w.Backup = target + ".bak-" + now.UTC().Format("20060102T150405Z")
	if err := state.WriteFileAtomic(w.Backup, cur, fi.Mode().Perm()); err != nil {
		return nil, fmt.Errorf("policy backup: %v", err)
	}
	if err := state.WriteFileAtomic(target, data, fi.Mode().Perm()); err != nil {
		return nil, fmt.Errorf("policy (the previous one is intact): %v", err)
	}
	return w, nil
}

// ReadPolicyBytes reads the policy file's raw content, bounded by
// scope.MaxPolicySize.
func ReadPolicyBytes(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %v", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, scope.MaxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("policy %s: %v", path, err)
	}
	if len(b) > scope.MaxPolicySize {
		return nil, fmt.Errorf("policy %s is larger than %d bytes", path, scope.MaxPolicySize)
	}
	return b, nil
}
