package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// A join token is "fmjt1.<payload>.<signature>", both base64url without
// padding. The payload is binary:
//
//	id        16 bytes, random
//	expires   8 bytes, Unix seconds, big-endian
//	cluster   1 length byte + bytes
//	node      1 length byte + bytes (empty for a syncer)
//
// The signature is ECDSA (ASN.1) by the CA key over SHA-256 of
// tokenContext || payload, so any replica holding the CA can verify a token
// any other replica issued, and nobody without the CA key can forge one.
const (
	tokenPrefix  = "fmjt1."
	tokenContext = "fedmesh join token v1\x00"
	tokenIDLen   = 16
	// MaxTokenTTL caps a join token's lifetime.
	MaxTokenTTL = 24 * time.Hour
	// DefaultTokenTTL is a token's lifetime when none is asked for.
	DefaultTokenTTL = 15 * time.Minute
	maxTokenLen     = 1024
)

// Token errors, checked with errors.Is.
var (
	ErrBadToken     = errors.New("malformed join token")
	ErrTokenExpired = errors.New("join token expired")
	ErrTokenForged  = errors.New("join token signature does not verify")
	ErrTokenUsed    = errors.New("join token already used")
)

// Token is a decoded join token.
type Token struct {
	ID      [tokenIDLen]byte
	Expires time.Time // whole seconds
	Cluster string
	Node    string
	payload []byte
	sig     []byte
}

// Principal is who the token's holder becomes.
func (t Token) Principal() Principal {
	if t.Node == "" {
		return Syncer(t.Cluster)
	}
	return Node(t.Cluster, t.Node)
}

// ParseToken decodes a token without checking its signature or expiry.
func ParseToken(s string) (Token, error) {
	if len(s) > maxTokenLen {
		return Token{}, fmt.Errorf("%w: longer than %d bytes", ErrBadToken, maxTokenLen)
	}
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return Token{}, fmt.Errorf("%w: does not start with %q", ErrBadToken, tokenPrefix)
	}
	p64, s64, ok := strings.Cut(rest, ".")
	if !ok {
		return Token{}, fmt.Errorf("%w: no signature", ErrBadToken)
	}
	payload, err := base64.RawURLEncoding.Strict().DecodeString(p64)
	if err != nil {
		return Token{}, fmt.Errorf("%w: payload: %v", ErrBadToken, err)
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(s64)
	if err != nil || len(sig) == 0 {
		return Token{}, fmt.Errorf("%w: signature encoding", ErrBadToken)
	}
	t := Token{payload: payload, sig: sig}
	b := payload
	if len(b) < tokenIDLen+8+2 {
		return Token{}, fmt.Errorf("%w: payload of %d bytes is too short", ErrBadToken, len(b))
	}
	copy(t.ID[:], b)
	b = b[tokenIDLen:]
	secs := int64(binary.BigEndian.Uint64(b))
	if secs <= 0 {
		return Token{}, fmt.Errorf("%w: expiry %d", ErrBadToken, secs)
	}
	t.Expires = time.Unix(secs, 0)
	b = b[8:]
	var okC, okN bool
	t.Cluster, b, okC = lengthPrefixed(b)
	t.Node, b, okN = lengthPrefixed(b)
	if !okC || !okN || len(b) != 0 {
		return Token{}, fmt.Errorf("%w: payload names do not decode", ErrBadToken)
	}
	if err := t.Principal().Validate(); err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	return t, nil
}

func lengthPrefixed(b []byte) (string, []byte, bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return "", nil, false
	}
	n := int(b[0])
	return string(b[1 : 1+n]), b[1+n:], true
}

func tokenDigest(payload []byte) []byte {
	h := sha256.New()
	h.Write([]byte(tokenContext))
	h.Write(payload)
	return h.Sum(nil)
}

// NewToken signs a token for the syncer (node empty) or node agent of
// cluster, expiring at expires, with signer (the CA key).
func NewToken(signer crypto.Signer, cluster, node string, expires time.Time) (string, Token, error) {
	t := Token{Cluster: cluster, Node: node, Expires: time.Unix(expires.Unix(), 0)}
	if err := t.Principal().Validate(); err != nil {
		return "", Token{}, fmt.Errorf("create join token: %w", err)
	}
	if signer == nil {
		return "", Token{}, errors.New("create join token: CA key not loaded on this replica; copy ca.key into its data dir")
	}
	if _, err := rand.Read(t.ID[:]); err != nil {
		return "", Token{}, fmt.Errorf("create join token: %w", err)
	}
	b := make([]byte, 0, tokenIDLen+8+2+len(cluster)+len(node))
	b = append(b, t.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(t.Expires.Unix()))
	b = append(b, byte(len(cluster)))
	b = append(b, cluster...)
	b = append(b, byte(len(node)))
	b = append(b, node...)
	sig, err := signer.Sign(rand.Reader, tokenDigest(b), crypto.SHA256)
	if err != nil {
		return "", Token{}, fmt.Errorf("sign join token: %w", err)
	}
	t.payload, t.sig = b, sig
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b) + "." + base64.RawURLEncoding.EncodeToString(sig), t, nil
}

// VerifyToken decodes s, checks its signature against the CA public key and
// that it has not expired at now. It does not check single use: that is
// the TokenLedger's job.
func VerifyToken(s string, caKey *ecdsa.PublicKey, now time.Time) (Token, error) {
	t, err := ParseToken(s)
	if err != nil {
		return Token{}, err
	}
	if !ecdsa.VerifyASN1(caKey, tokenDigest(t.payload), t.sig) {
		return Token{}, ErrTokenForged
	}
	if !now.Before(t.Expires) {
		return Token{}, fmt.Errorf("%w at %s; ask an admin for a new one", ErrTokenExpired, t.Expires.UTC().Format(time.RFC3339))
	}
	return t, nil
}
