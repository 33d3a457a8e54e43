package vwserver

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hostd/broker/internal/bwcrypto"
)

// Cipher types, as in the Bitwarden API.
const (
	cipherLogin = 1
	cipherNote  = 2
	cipherCard  = 3
)

// Member types for AddMember.
const (
	MemberOwner = 0
	MemberAdmin = 1
	MemberUser  = 2
)

// clientSecretLen is the length of a generated API client secret.
const clientSecretLen = 30

// User is a seeded account and its API key. ClientID and ClientSecret are
// what `bw login --apikey` takes as BW_CLIENTID and BW_CLIENTSECRET.
type User struct {
	ID           string
	Email        string
	ClientID     string // "user." + ID
	ClientSecret string // 30 alphanumerics
}

// user is the server's record of an account: only what a real server holds.
type user struct {
	id, email, name string
	salt            string // the lower-cased email
	kdfIterations   int
	wrappedUserKey  string // EncString2(stretched master key, user key)
	wrappedPrivKey  string // EncString2(user key, PKCS#8 DER)
	publicKeyB64    string // b64(SPKI DER)
	publicKey       *rsa.PublicKey
	clientSecret    string
	securityStamp   string
	userKeyID       string // set by the client's key-id backfill
	created         time.Time
}

// org is an organization. key is held by the seeding side (see the package
// doc); a real server would never see it.
type org struct {
	id, name string
	key      *bwcrypto.Key
	members  map[string]*member // by user id
}

type member struct {
	id      string // organizationUserId
	typ     int
	wrapped string // "4." + b64(RSA-OAEP-SHA1(user public key, org key))
}

type collection struct {
	id, orgID string
	name      string // EncString2(org key, name)
}

type item struct {
	id, orgID     string
	collectionIDs []string
	typ           int
	name          string  // EncString
	notes         *string // EncString or nil
	username      *string // login only
	password      *string // login only
	card          map[string]string
	created       time.Time
	revised       time.Time
}

// bumpLocked moves the revision date forward, strictly. s.mu must be held.
func (s *Server) bumpLocked() time.Time {
	now := time.Now().UnixMilli()
	if now <= s.revision {
		now = s.revision + 1
	}
	s.revision = now
	return time.UnixMilli(now).UTC()
}

// AddUser creates an account with a master password and an API key. All key
// material is made here: the master key (PBKDF2-SHA256 over the lower-cased
// email), the 64-byte user key wrapped by the stretched master key, and an
// RSA-2048 pair whose private key is wrapped by the user key. The password
// and the unwrapped keys are not kept.
func (s *Server) AddUser(email, password string) User {
	salt := strings.ToLower(email)
	masterKey, err := pbkdf2.Key(sha256.New, password, []byte(salt), s.opts.KDFIterations, 32)
	if err != nil {
		panic("vwserver: add user: pbkdf2: " + err.Error())
	}
	stretched, err := bwcrypto.StretchKey(masterKey)
	if err != nil {
		panic("vwserver: add user: " + err.Error())
	}
	userKey := bwcrypto.NewKey()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic("vwserver: add user: rsa: " + err.Error())
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		panic("vwserver: add user: pkcs8: " + err.Error())
	}
	spki, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		panic("vwserver: add user: spki: " + err.Error())
	}
	u := &user{
		id:             newUUID(),
		email:          email,
		name:           strings.SplitN(email, "@", 2)[0],
		salt:           salt,
		kdfIterations:  s.opts.KDFIterations,
		wrappedUserKey: bwcrypto.Encrypt(stretched, userKey.Bytes()),
		wrappedPrivKey: bwcrypto.Encrypt(userKey, pkcs8),
		publicKeyB64:   base64.StdEncoding.EncodeToString(spki),
		publicKey:      &priv.PublicKey,
		clientSecret:   newClientSecret(),
		securityStamp:  newUUID(),
		created:        time.Now().UTC(),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[u.id] = u
	s.byClientID["user."+u.id] = u
	s.bumpLocked()
	return User{ID: u.id, Email: u.email, ClientID: "user." + u.id, ClientSecret: u.clientSecret}
}

// AddOrganization creates an organization with a fresh 64-byte key.
func (s *Server) AddOrganization(name string) (orgID string) {
	o := &org{id: newUUID(), name: name, key: bwcrypto.NewKey(), members: map[string]*member{}}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.orgs[o.id] = o
	s.bumpLocked()
	return o.id
}

// AddMember makes a user a confirmed member (status 2) of an organization
// with memberType MemberOwner, MemberAdmin or MemberUser; the org key is
// wrapped to the user's RSA public key (EncString type 4, RSA-OAEP SHA-1).
// It panics on an unknown organization or user, like other seeding misuse.
func (s *Server) AddMember(orgID, userID string, memberType int) {
	if memberType < MemberOwner || memberType > MemberUser {
		panic(fmt.Sprintf("vwserver: add member: bad member type %d", memberType))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o, u := s.orgs[orgID], s.users[userID]
	if o == nil || u == nil {
		panic("vwserver: add member: unknown organization or user")
	}
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, u.publicKey, o.key.Bytes(), nil)
	if err != nil {
		panic("vwserver: add member: rsa: " + err.Error())
	}
	o.members[userID] = &member{id: newUUID(), typ: memberType, wrapped: "4." + base64.StdEncoding.EncodeToString(ct)}
	s.bumpLocked()
}

// AddCollection creates a collection in an organization; its name is
// encrypted with the org key.
func (s *Server) AddCollection(orgID, name string) (collectionID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.orgs[orgID]
	if o == nil {
		panic("vwserver: add collection: unknown organization")
	}
	c := &collection{id: newUUID(), orgID: orgID, name: bwcrypto.EncryptString(o.key, name)}
	s.collections[c.id] = c
	s.bumpLocked()
	return c.id
}

// encOpt encrypts v, or returns nil for an empty string, as the clients
// store an empty field.
func encOpt(k *bwcrypto.Key, v string) *string {
	if v == "" {
		return nil
	}
	e := bwcrypto.EncryptString(k, v)
	return &e
}

func (s *Server) addItem(orgID, collectionID string, it *item, fill func(k *bwcrypto.Key)) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.orgs[orgID]
	c := s.collections[collectionID]
	if o == nil || c == nil || c.orgID != orgID {
		panic("vwserver: add item: unknown organization or collection")
	}
	it.id = newUUID()
	it.orgID = orgID
	it.collectionIDs = []string{collectionID}
	fill(o.key)
	it.created = s.bumpLocked()
	it.revised = it.created
	s.items[it.id] = it
	return it.id
}

// AddLogin creates a Login item (type 1) in a collection. An empty username
// or password is stored as null, as the clients do.
func (s *Server) AddLogin(orgID, collectionID, name, username, password string) (itemID string) {
	it := &item{typ: cipherLogin}
	return s.addItem(orgID, collectionID, it, func(k *bwcrypto.Key) {
		it.name = bwcrypto.EncryptString(k, name)
		it.username = encOpt(k, username)
		it.password = encOpt(k, password)
	})
}

// AddNote creates a Secure Note item (type 2) in a collection. Empty notes
// are stored as null, as the clients do.
func (s *Server) AddNote(orgID, collectionID, name, notes string) (itemID string) {
	it := &item{typ: cipherNote}
	return s.addItem(orgID, collectionID, it, func(k *bwcrypto.Key) {
		it.name = bwcrypto.EncryptString(k, name)
		it.notes = encOpt(k, notes)
	})
}

// AddCard creates a Card item (type 3), a type the broker ignores.
func (s *Server) AddCard(orgID, collectionID, name string) (itemID string) {
	it := &item{typ: cipherCard}
	return s.addItem(orgID, collectionID, it, func(k *bwcrypto.Key) {
		it.name = bwcrypto.EncryptString(k, name)
		it.card = map[string]string{
			"cardholderName": bwcrypto.EncryptString(k, "Test Holder"),
			"brand":          bwcrypto.EncryptString(k, "Visa"),
			"number":         bwcrypto.EncryptString(k, "4111111111111111"),
			"expMonth":       bwcrypto.EncryptString(k, "12"),
			"expYear":        bwcrypto.EncryptString(k, "2030"),
			"code":           bwcrypto.EncryptString(k, "123"),
		}
	})
}

// ErrNotFound is returned for an unknown item.
var ErrNotFound = errors.New("vwserver: no such item")

// UpdateItem sets a Login item's password or a Secure Note's text, and bumps
// the item's and the account's revision dates.
func (s *Server) UpdateItem(itemID, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	it := s.items[itemID]
	if it == nil {
		return ErrNotFound
	}
	k := s.orgs[it.orgID].key
	switch it.typ {
	case cipherLogin:
		it.password = encOpt(k, value)
	case cipherNote:
		it.notes = encOpt(k, value)
	default:
		return fmt.Errorf("vwserver: update item: type %d has no value to update", it.typ)
	}
	it.revised = s.bumpLocked()
	return nil
}

// DeleteItem removes an item for good and bumps the revision date.
func (s *Server) DeleteItem(itemID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.items[itemID] == nil {
		return ErrNotFound
	}
	delete(s.items, itemID)
	s.bumpLocked()
	return nil
}

// RotateClientSecret gives a user a new API client secret; the old one is
// refused from then on. Access tokens already issued stay valid until they
// expire. It panics on an unknown user.
func (s *Server) RotateClientSecret(userID string) (newSecret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[userID]
	if u == nil {
		panic("vwserver: rotate client secret: unknown user")
	}
	u.clientSecret = newClientSecret()
	return u.clientSecret
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// newClientSecret returns clientSecretLen random alphanumerics.
func newClientSecret() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	const limit = 256 - 256%len(alphabet) // reject bytes that would bias the draw
	out := make([]byte, 0, clientSecretLen)
	var buf [64]byte
	for len(out) < clientSecretLen {
		rand.Read(buf[:])
		for _, c := range buf {
			if int(c) < limit && len(out) < clientSecretLen {
				out = append(out, alphabet[int(c)%len(alphabet)])
			}
		}
	}
	return string(out)
}
