package smserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/hostd/broker/internal/bwcrypto"
)

// Limits the SDK enforces on Create/Update (characters); the server checks
// them too.
const (
	maxKeyChars   = 500
	maxValueChars = 25000
	maxNoteChars  = 7000
)

// apiHandler is an API handler called with s.mu held and the caller's
// machine account authenticated.
type apiHandler func(w http.ResponseWriter, r *http.Request, a *account)

// api wraps h with the lock and the JWT check (401 with an empty body, as
// the real server answers).
func (s *Server) api(h apiHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// The handler answers into memory under the lock; the network write
		// happens after it, so a slow client never stalls the server.
		rec := &recorder{header: w.Header()}
		s.mu.Lock()
		if a := s.authLocked(r); a != nil {
			h(rec, r, a)
		} else {
			rec.header.Set("WWW-Authenticate", "Bearer")
			rec.WriteHeader(http.StatusUnauthorized)
		}
		s.mu.Unlock()
		w.WriteHeader(rec.statusCode())
		w.Write(rec.body.Bytes())
	}
}

// apiError answers {"message":…,"object":"error"} with status.
func apiError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"message": msg, "validationErrors": nil, "object": "error"})
}

func notFound(w http.ResponseWriter) { apiError(w, http.StatusNotFound, "Resource not found.") }

// formatTime is RFC 3339 with nanoseconds, in UTC ("Z"), which the SDK's
// chrono parser accepts.
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// ---- response models (camelCase, as the real API) ----

type projectRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type secretModel struct {
	Object         string       `json:"object"`
	ID             string       `json:"id"`
	OrganizationID string       `json:"organizationId"`
	Key            string       `json:"key"`
	Value          string       `json:"value"`
	Note           string       `json:"note"`
	CreationDate   string       `json:"creationDate"`
	RevisionDate   string       `json:"revisionDate"`
	Projects       []projectRef `json:"projects"`
	Read           bool         `json:"read"`
	Write          bool         `json:"write"`
}

type secretListItem struct {
	ID             string       `json:"id"`
	OrganizationID string       `json:"organizationId"`
	Key            string       `json:"key"`
	CreationDate   string       `json:"creationDate"`
	RevisionDate   string       `json:"revisionDate"`
	Projects       []projectRef `json:"projects"`
	Read           bool         `json:"read"`
	Write          bool         `json:"write"`
}

type projectModel struct {
	Object         string `json:"object"`
	ID             string `json:"id"`
	OrganizationID string `json:"organizationId"`
	Name           string `json:"name"`
	CreationDate   string `json:"creationDate"`
	RevisionDate   string `json:"revisionDate"`
	Read           bool   `json:"read"`
	Write          bool   `json:"write"`
}

type listModel[T any] struct {
	Object            string  `json:"object"`
	Data              []T     `json:"data"`
	ContinuationToken *string `json:"continuationToken"`
}

func newList[T any](data []T) listModel[T] {
	if data == nil {
		data = []T{}
	}
	return listModel[T]{Object: "list", Data: data}
}

// ---- visibility ----

func (a *account) canRead(sec *secret) bool {
	return sec.orgID == a.orgID && sec.projectID != "" && a.read[sec.projectID]
}

func (a *account) canWrite(sec *secret) bool {
	return sec.orgID == a.orgID && sec.projectID != "" && a.write[sec.projectID]
}

// visibleSecretsLocked returns the secrets a can read, oldest first.
func (s *Server) visibleSecretsLocked(a *account) []*secret {
	var out []*secret
	for _, sec := range s.secrets {
		if a.canRead(sec) {
			out = append(out, sec)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].created.Equal(out[j].created) {
			return out[i].created.Before(out[j].created)
		}
		return out[i].id < out[j].id
	})
	return out
}

func (s *Server) projectRefsLocked(sec *secret) []projectRef {
	p, ok := s.projects[sec.projectID]
	if !ok {
		return []projectRef{}
	}
	return []projectRef{{ID: p.id, Name: p.name}}
}

func (s *Server) secretModelLocked(a *account, sec *secret) secretModel {
	return secretModel{
		Object:         "secret",
		ID:             sec.id,
		OrganizationID: sec.orgID,
		Key:            sec.key,
		Value:          sec.value,
		Note:           sec.note,
		CreationDate:   formatTime(sec.created),
		RevisionDate:   formatTime(sec.revised),
		Projects:       s.projectRefsLocked(sec),
		Read:           a.canRead(sec),
		Write:          a.canWrite(sec),
	}
}

func projectModelOf(a *account, p *project) projectModel {
	return projectModel{
		Object:         "project",
		ID:             p.id,
		OrganizationID: p.orgID,
		Name:           p.name,
		CreationDate:   formatTime(p.created),
		RevisionDate:   formatTime(p.revised),
		Read:           a.read[p.id],
		Write:          a.write[p.id],
	}
}

// orgOK reports whether the {org} path value is the caller's organization.
func orgOK(r *http.Request, a *account) bool {
	return strings.ToLower(r.PathValue("org")) == a.orgID
}

// decodeBody decodes a bounded JSON body into v.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		apiError(w, http.StatusBadRequest, "The request body is not valid JSON.")
		return false
	}
	return true
}

// ---- handlers ----

// handleListSecrets: GET /api/organizations/{org}/secrets.
func (s *Server) handleListSecrets(w http.ResponseWriter, r *http.Request, a *account) {
	if !orgOK(r, a) {
		notFound(w)
		return
	}
	items := []secretListItem{}
	projects := []projectRef{}
	seen := map[string]bool{}
	for _, sec := range s.visibleSecretsLocked(a) {
		refs := s.projectRefsLocked(sec)
		items = append(items, secretListItem{
			ID: sec.id, OrganizationID: sec.orgID, Key: sec.key,
			CreationDate: formatTime(sec.created), RevisionDate: formatTime(sec.revised),
			Projects: refs, Read: true, Write: a.canWrite(sec),
		})
		for _, p := range refs {
			if !seen[p.ID] {
				seen[p.ID] = true
				projects = append(projects, p)
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"object":   "SecretsWithProjectsList",
		"secrets":  items,
		"projects": projects,
	})
}

// handleGetSecret: GET /api/secrets/{id}.
func (s *Server) handleGetSecret(w http.ResponseWriter, r *http.Request, a *account) {
	sec, ok := s.secrets[strings.ToLower(r.PathValue("id"))]
	if !ok || !a.canRead(sec) {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, s.secretModelLocked(a, sec))
}

// handleGetByIDs: POST /api/secrets/get-by-ids {"ids":[…]}. Like the real
// server, one id that is unknown or not visible makes it a 404.
func (s *Server) handleGetByIDs(w http.ResponseWriter, r *http.Request, a *account) {
	var req struct {
		IDs []string `json:"ids"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	data := []secretModel{}
	seen := map[string]bool{}
	for _, id := range req.IDs {
		id = strings.ToLower(id)
		if seen[id] {
			continue
		}
		seen[id] = true
		sec, ok := s.secrets[id]
		if !ok || !a.canRead(sec) {
			notFound(w)
			return
		}
		data = append(data, s.secretModelLocked(a, sec))
	}
	writeJSON(w, http.StatusOK, newList(data))
}

// handleSync: GET /api/organizations/{org}/secrets/sync[?lastSyncedDate=…].
func (s *Server) handleSync(w http.ResponseWriter, r *http.Request, a *account) {
	if !orgOK(r, a) {
		notFound(w)
		return
	}
	changed := true
	if v := r.URL.Query().Get("lastSyncedDate"); v != "" {
		since, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			apiError(w, http.StatusBadRequest, "lastSyncedDate is not an RFC 3339 date.")
			return
		}
		changed = s.changedSinceLocked(a, since)
	}
	resp := map[string]any{"object": "secretsSync", "hasChanges": changed, "secrets": nil}
	if changed {
		data := []secretModel{}
		for _, sec := range s.visibleSecretsLocked(a) {
			data = append(data, s.secretModelLocked(a, sec))
		}
		resp["secrets"] = newList(data)
	}
	writeJSON(w, http.StatusOK, resp)
}

// changedSinceLocked reports whether the account's grants, or a secret in a
// project it can read, changed after since.
func (s *Server) changedSinceLocked(a *account, since time.Time) bool {
	if a.grantsChanged.After(since) {
		return true
	}
	for pid := range a.read {
		if p, ok := s.projects[pid]; ok && p.changed.After(since) {
			return true
		}
	}
	return false
}

// handleListProjects: GET /api/organizations/{org}/projects.
func (s *Server) handleListProjects(w http.ResponseWriter, r *http.Request, a *account) {
	if !orgOK(r, a) {
		notFound(w)
		return
	}
	var data []projectModel
	for pid := range a.read {
		if p, ok := s.projects[pid]; ok {
			data = append(data, projectModelOf(a, p))
		}
	}
	sort.Slice(data, func(i, j int) bool {
		if data[i].CreationDate != data[j].CreationDate {
			return data[i].CreationDate < data[j].CreationDate
		}
		return data[i].ID < data[j].ID
	})
	writeJSON(w, http.StatusOK, newList(data))
}

// handleGetProject: GET /api/projects/{id}.
func (s *Server) handleGetProject(w http.ResponseWriter, r *http.Request, a *account) {
	p, ok := s.projects[strings.ToLower(r.PathValue("id"))]
	if !ok || p.orgID != a.orgID || !a.read[p.id] {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, projectModelOf(a, p))
}

// secretRequest is the body of create and update.
type secretRequest struct {
	Key        string   `json:"key"`
	Value      string   `json:"value"`
	Note       string   `json:"note"`
	ProjectIDs []string `json:"projectIds"`
}

// checkLocked decrypts the EncStrings of a create/update request with the
// organization key and checks the SDK's limits on the plaintext.
func (s *Server) checkLocked(orgID string, req *secretRequest) error {
	k := s.orgs[orgID].key
	fields := []struct {
		name, enc string
		max       int
		required  bool
	}{
		{"key", req.Key, maxKeyChars, true},
		{"value", req.Value, maxValueChars, true},
		{"note", req.Note, maxNoteChars, false},
	}
	for _, f := range fields {
		if f.enc == "" && !f.required {
			continue
		}
		pt, err := bwcrypto.DecryptString(k, f.enc)
		if err != nil {
			return fmt.Errorf("%s is not an EncString under the organization key", f.name)
		}
		if n := len([]rune(pt)); n > f.max || (f.required && f.name == "key" && strings.TrimSpace(pt) == "") {
			return fmt.Errorf("%s has an invalid length", f.name)
		}
	}
	return nil
}

// writableProjectLocked resolves the single project of a create/update: 404
// when it is not visible to a, 403 when visible but read-only.
func (s *Server) writableProjectLocked(w http.ResponseWriter, a *account, ids []string) (*project, bool) {
	if len(ids) != 1 {
		apiError(w, http.StatusBadRequest, "A machine account must put a secret in exactly one project.")
		return nil, false
	}
	p, ok := s.projects[strings.ToLower(ids[0])]
	if !ok || p.orgID != a.orgID || !a.read[p.id] {
		notFound(w)
		return nil, false
	}
	if !a.write[p.id] {
		apiError(w, http.StatusForbidden, "You do not have permission to write to this project.")
		return nil, false
	}
	return p, true
}

// handleCreateSecret: POST /api/organizations/{org}/secrets.
func (s *Server) handleCreateSecret(w http.ResponseWriter, r *http.Request, a *account) {
	if !orgOK(r, a) {
		notFound(w)
		return
	}
	var req secretRequest
	if !decodeBody(w, r, &req) {
		return
	}
	p, ok := s.writableProjectLocked(w, a, req.ProjectIDs)
	if !ok {
		return
	}
	if err := s.checkLocked(a.orgID, &req); err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Note == "" {
		req.Note = bwcrypto.EncryptString(s.orgs[a.orgID].key, "")
	}
	now := s.nowLocked()
	sec := &secret{
		id: newUUID(), orgID: a.orgID, projectID: p.id,
		key: req.Key, value: req.Value, note: req.Note,
		created: now, revised: now,
	}
	s.secrets[sec.id] = sec
	s.touchLocked(p.id, now)
	s.stats.writes.Add(1)
	writeJSON(w, http.StatusOK, s.secretModelLocked(a, sec))
}

// handleUpdateSecret: PUT /api/secrets/{id}. Without projectIds the secret
// stays in its project.
func (s *Server) handleUpdateSecret(w http.ResponseWriter, r *http.Request, a *account) {
	sec, ok := s.secrets[strings.ToLower(r.PathValue("id"))]
	if !ok || !a.canRead(sec) {
		notFound(w)
		return
	}
	if !a.canWrite(sec) {
		apiError(w, http.StatusForbidden, "You do not have permission to update this secret.")
		return
	}
	var req secretRequest
	if !decodeBody(w, r, &req) {
		return
	}
	target := s.projects[sec.projectID]
	if len(req.ProjectIDs) > 0 {
		if target, ok = s.writableProjectLocked(w, a, req.ProjectIDs); !ok {
			return
		}
	}
	if err := s.checkLocked(a.orgID, &req); err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Note == "" {
		req.Note = bwcrypto.EncryptString(s.orgs[a.orgID].key, "")
	}
	now := s.nowLocked()
	s.touchLocked(sec.projectID, now)
	sec.key, sec.value, sec.note = req.Key, req.Value, req.Note
	sec.projectID = target.id
	sec.revised = now
	s.touchLocked(sec.projectID, now)
	s.stats.writes.Add(1)
	writeJSON(w, http.StatusOK, s.secretModelLocked(a, sec))
}

// handleDeleteSecrets: POST /api/secrets/delete with a JSON array of ids.
// An id that is unknown or invisible makes it a 404 (nothing deleted); a
// visible but read-only secret is reported with an error and kept.
func (s *Server) handleDeleteSecrets(w http.ResponseWriter, r *http.Request, a *account) {
	var ids []string
	if !decodeBody(w, r, &ids) {
		return
	}
	type result struct {
		ID    string  `json:"id"`
		Error *string `json:"error"`
	}
	var secs []*secret
	for _, id := range ids {
		sec, ok := s.secrets[strings.ToLower(id)]
		if !ok || !a.canRead(sec) {
			notFound(w)
			return
		}
		secs = append(secs, sec)
	}
	data := []result{}
	now := s.nowLocked()
	for _, sec := range secs {
		if !a.canWrite(sec) {
			msg := "access denied"
			data = append(data, result{ID: sec.id, Error: &msg})
			continue
		}
		if _, ok := s.secrets[sec.id]; ok {
			delete(s.secrets, sec.id)
			s.touchLocked(sec.projectID, now)
		}
		data = append(data, result{ID: sec.id})
	}
	writeJSON(w, http.StatusOK, newList(data))
}
