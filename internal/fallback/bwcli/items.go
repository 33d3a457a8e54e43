package bwcli

import (
	"slices"

	"github.com/hostd/broker/internal/fetch"
)

// bw item types.
const (
	itemLogin      = 1
	itemSecureNote = 2
)

// bwItem is the part of a bw item the backend reads.
type bwItem struct {
	ID             string   `json:"id"`
	OrganizationID string   `json:"organizationId"`
	CollectionIDs  []string `json:"collectionIds"`
	Type           int      `json:"type"`
	Name           string   `json:"name"`
	Notes          *string  `json:"notes"`
	Login          *struct {
		Password *string `json:"password"`
	} `json:"login"`
	DeletedDate *string `json:"deletedDate"`
}

// bwCollection is the part of a bw collection the backend reads.
type bwCollection struct {
	ID             string `json:"id"`
	OrganizationID string `json:"organizationId"`
	Name           string `json:"name"`
}

// inCollection reports whether it belongs to the organization's collection
// and is not in the trash.
func (it *bwItem) inCollection(org, coll string) bool {
	return it.OrganizationID == org && it.DeletedDate == nil && slices.Contains(it.CollectionIDs, coll)
}

// countInCollection counts the items of the organization's collection.
func countInCollection(items []bwItem, org, coll string) int {
	n := 0
	for i := range items {
		if items[i].inCollection(org, coll) {
			n++
		}
	}
	return n
}

// buildEnv maps the collection's items to an env: a Login gives its password,
// a Secure Note its notes, keyed by the item name. Items of other types are
// counted in ignored. Invalid or duplicate names fail with a KindData error
// that names the key, never a value.
func buildEnv(tenant, org, coll string, items []bwItem) (env fetch.Env, ignored int, err error) {
	eb := fetch.EnvBuilder{Tenant: tenant}
	for i := range items {
		it := &items[i]
		if !it.inCollection(org, coll) {
			continue
		}
		var value string
		switch it.Type {
		case itemLogin:
			if it.Login != nil && it.Login.Password != nil {
				value = *it.Login.Password
			}
		case itemSecureNote:
			if it.Notes != nil {
				value = *it.Notes
			}
		default:
			ignored++
			continue
		}
		if err := eb.Add(it.Name, value); err != nil {
			return nil, 0, err
		}
	}
	return eb.Env(), ignored, nil
}

// countInOrg counts the organization's items not in the trash, in any
// collection.
func countInOrg(items []bwItem, org string) int {
	n := 0
	for i := range items {
		if items[i].OrganizationID == org && items[i].DeletedDate == nil {
			n++
		}
	}
	return n
}
