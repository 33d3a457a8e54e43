// Package bwcrypto implements the Bitwarden symmetric cryptography the broker
// needs on both sides of the wire: type-2 EncStrings (AES-256-CBC with
// HMAC-SHA256, encrypt-then-MAC) and the Secrets Manager access-token key
// derivation. It uses only the standard library.
//
// The in-repo upstreams use it to produce real ciphertext for the real SDK and
// the real bw CLI; the pure-Go Secrets Manager client uses it to read it.
// MACs are checked in constant time before anything is decrypted. Errors never
// contain key material or plaintext.
package bwcrypto

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Key is a 64-byte symmetric key: AES-256 key ‖ HMAC-SHA256 key.
type Key struct {
	Enc [32]byte
	Mac [32]byte
}

// String never prints key material.
func (k *Key) String() string { return "bwcrypto.Key[REDACTED]" }

// GoString never prints key material.
func (k *Key) GoString() string { return k.String() }

// KeyFromBytes splits a 64-byte key into its encryption and MAC halves.
func KeyFromBytes(b []byte) (*Key, error) {
	if len(b) != 64 {
		return nil, fmt.Errorf("bwcrypto: key must be 64 bytes, got %d", len(b))
	}
	k := new(Key)
	copy(k.Enc[:], b[:32])
	copy(k.Mac[:], b[32:])
	return k, nil
}

// Bytes returns enc ‖ mac (64 bytes).
func (k *Key) Bytes() []byte {
	b := make([]byte, 0, 64)
	b = append(b, k.Enc[:]...)
	return append(b, k.Mac[:]...)
}

// NewKey returns a fresh random 64-byte key.
func NewKey() *Key {
	k := new(Key)
	rand.Read(k.Enc[:])
	rand.Read(k.Mac[:])
	return k
}

// DeriveShareableKey derives a 64-byte key as Bitwarden's
// derive_shareable_key does: prk = HMAC-SHA256(key = "bitwarden-"+name,
// secret), then HKDF-Expand-SHA256(prk, info, 64).
func DeriveShareableKey(secret []byte, name, info string) (*Key, error) {
	m := hmac.New(sha256.New, []byte("bitwarden-"+name))
	m.Write(secret)
	prk := m.Sum(nil)
	okm, err := hkdf.Expand(sha256.New, prk, info, 64)
	if err != nil {
		return nil, fmt.Errorf("bwcrypto: hkdf expand: %v", err)
	}
	return KeyFromBytes(okm)
}

// AccessTokenKey derives the key of a Secrets Manager access token from its
// 16-byte encryption key.
func AccessTokenKey(secret16 []byte) (*Key, error) {
	if len(secret16) != 16 {
		return nil, fmt.Errorf("bwcrypto: access token key must be 16 bytes, got %d", len(secret16))
	}
	return DeriveShareableKey(secret16, "accesstoken", "sm-access-token")
}

// StretchKey expands a 32-byte master key to 64 bytes with HKDF-Expand (no
// extract step), info "enc" and "mac", as the password manager does.
func StretchKey(masterKey []byte) (*Key, error) {
	enc, err := hkdf.Expand(sha256.New, masterKey, "enc", 32)
	if err != nil {
		return nil, fmt.Errorf("bwcrypto: hkdf expand: %v", err)
	}
	mac, err := hkdf.Expand(sha256.New, masterKey, "mac", 32)
	if err != nil {
		return nil, fmt.Errorf("bwcrypto: hkdf expand: %v", err)
	}
	return KeyFromBytes(append(enc, mac...))
}

// Errors returned by Decrypt. They carry no key material or plaintext.
var (
	ErrMalformed = errors.New("bwcrypto: malformed EncString")
	ErrMAC       = errors.New("bwcrypto: the cipher's MAC doesn't match the expected value")
)

// Encrypt returns the type-2 EncString of plaintext under k:
// "2." + b64(iv) + "|" + b64(ct) + "|" + b64(mac), with a random IV.
func Encrypt(k *Key, plaintext []byte) string {
	iv := make([]byte, aes.BlockSize)
	rand.Read(iv)
	block, err := aes.NewCipher(k.Enc[:])
	if err != nil {
		panic("bwcrypto: " + err.Error()) // impossible: the key is 32 bytes
	}
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	buf := make([]byte, len(plaintext)+pad)
	copy(buf, plaintext)
	for i := len(plaintext); i < len(buf); i++ {
		buf[i] = byte(pad)
	}
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(buf, buf)
	mac := macOf(k, iv, buf)
	enc := base64.StdEncoding
	return "2." + enc.EncodeToString(iv) + "|" + enc.EncodeToString(buf) + "|" + enc.EncodeToString(mac)
}

// EncryptString is Encrypt for a string.
func EncryptString(k *Key, plaintext string) string { return Encrypt(k, []byte(plaintext)) }

func macOf(k *Key, iv, ct []byte) []byte {
	m := hmac.New(sha256.New, k.Mac[:])
	m.Write(iv)
	m.Write(ct)
	return m.Sum(nil)
}

// Decrypt checks the MAC of a type-2 EncString in constant time and then
// decrypts it. Only type 2 is accepted.
func Decrypt(k *Key, s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, "2.")
	if !ok {
		return nil, fmt.Errorf("%w: only type 2 is supported", ErrMalformed)
	}
	parts := strings.Split(rest, "|")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: want 3 parts, got %d", ErrMalformed, len(parts))
	}
	var raw [3][]byte
	for i, p := range parts {
		b, err := base64.StdEncoding.Strict().DecodeString(p)
		if err != nil {
			return nil, fmt.Errorf("%w: part %d is not padded standard base64", ErrMalformed, i+1)
		}
		raw[i] = b
	}
	iv, ct, mac := raw[0], raw[1], raw[2]
	if len(iv) != aes.BlockSize || len(mac) != sha256.Size || len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("%w: bad lengths", ErrMalformed)
	}
	if !hmac.Equal(mac, macOf(k, iv, ct)) {
		return nil, ErrMAC
	}
	block, err := aes.NewCipher(k.Enc[:])
	if err != nil {
		return nil, fmt.Errorf("bwcrypto: %v", err)
	}
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
	pad := int(pt[len(pt)-1])
	if pad == 0 || pad > aes.BlockSize || !bytes.Equal(pt[len(pt)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
		return nil, fmt.Errorf("%w: bad padding", ErrMalformed)
	}
	return pt[:len(pt)-pad], nil
}

// DecryptString is Decrypt returning a string.
func DecryptString(k *Key, s string) (string, error) {
	b, err := Decrypt(k, s)
	return string(b), err
}
