//go:build cgo && (linux || darwin) && (amd64 || arm64)

package fetch

// The SDK's Rust library needs libm (tokio calls pow). gcc links with
// --as-needed here, which would drop a plain -lm, hence the push-state dance;
// on darwin libm is part of libSystem and ld64 has no --push-state.

// #cgo linux LDFLAGS: -Wl,--push-state,--no-as-needed -lm -Wl,--pop-state
// #cgo darwin LDFLAGS: -lm
import "C"

import (
	"errors"
	"os"
	"time"

	sdk "github.com/bitwarden/sdk-go"
)

// smNewSDKClient creates a real SDK client. Both URLs are always passed (a
// nil URL silently means bitwarden.com). Each client owns a tokio thread
// pool until Close.
//
// Known SDK leak: the Go wrapper never frees the command strings it hands to
// C, and for Create/Update those hold the plaintext key, value and note.
var smNewSDKClient = func(apiURL, identityURL string) (smClient, error) {
	os.Unsetenv("RUST_LOG") // at debug level the SDK prints client secrets
	api, identity := apiURL, identityURL
	c, err := sdk.NewBitwardenClient(&api, &identity)
	if err != nil {
		return nil, err
	}
	return &sdkClient{c: c}, nil
}

// sdkClient adapts sdk.BitwardenClientInterface to smClient.
type sdkClient struct {
	c sdk.BitwardenClientInterface
}

func (s *sdkClient) Login(accessToken, stateFile string) error {
	var sf *string
	if stateFile != "" {
		sf = &stateFile
	}
	return s.c.AccessTokenLogin(accessToken, sf)
}

func (s *sdkClient) Sync(orgID string, lastSynced *time.Time) (bool, []smSecret, error) {
	var last *time.Time
	if lastSynced != nil {
		t := lastSynced.UTC()
		last = &t
	}
	r, err := s.c.Secrets().Sync(orgID, last)
	if err != nil {
		return false, nil, err
	}
	if r == nil {
		return false, nil, errors.New("expected a sync response")
	}
	out := make([]smSecret, len(r.Secrets))
	for i := range r.Secrets {
		out[i] = fromSDKSecret(&r.Secrets[i])
	}
	return r.HasChanges, out, nil
}

func (s *sdkClient) List(orgID string) ([]smSecretID, error) {
	r, err := s.c.Secrets().List(orgID)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, nil
	}
	out := make([]smSecretID, len(r.Data))
	for i, d := range r.Data {
		out[i] = smSecretID{ID: d.ID, OrganizationID: d.OrganizationID, Key: d.Key}
	}
	return out, nil
}

func (s *sdkClient) ProjectExists(projectID string) (bool, error) {
	r, err := s.c.Projects().Get(projectID)
	if err != nil {
		if classifySDKError(err).class == classNotFound {
			return false, nil
		}
		return false, err
	}
	if r == nil {
		return false, errors.New("expected a project response")
	}
	return true, nil
}

func (s *sdkClient) Create(orgID, projectID, key, value, note string) (smSecret, error) {
	r, err := s.c.Secrets().Create(key, value, note, orgID, []string{projectID})
	if err != nil {
		return smSecret{}, err
	}
	return fromSDKSecret(r), nil
}

func (s *sdkClient) Update(id, orgID, projectID, key, value, note string) (smSecret, error) {
	r, err := s.c.Secrets().Update(id, key, value, note, orgID, []string{projectID})
	if err != nil {
		return smSecret{}, err
	}
	return fromSDKSecret(r), nil
}

func (s *sdkClient) Delete(ids []string) error {
	r, err := s.c.Secrets().Delete(ids)
	if err != nil {
		return err
	}
	if r != nil {
		for _, d := range r.Data {
			if d.Error != nil {
				return &smFailure{class: classClient, cause: "upstream refused to delete a secret"}
			}
		}
	}
	return nil
}

func (s *sdkClient) Close() { s.c.Close() }

func fromSDKSecret(r *sdk.SecretResponse) smSecret {
	if r == nil {
		return smSecret{}
	}
	out := smSecret{ID: r.ID, OrganizationID: r.OrganizationID, Key: r.Key, Value: r.Value, Note: r.Note}
	if r.ProjectID != nil {
		out.ProjectID = *r.ProjectID
	}
	return out
}
