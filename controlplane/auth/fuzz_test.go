package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
	"time"
)

// FuzzParsePrincipal: no panic; whatever parses is canonical (re-encodes to
// the same string) and valid.
func FuzzParsePrincipal(f *testing.F) {
	for _, s := range []string{
		"spiffe://fedmesh/admin",
		"spiffe://fedmesh/cluster/east/syncer",
		"spiffe://fedmesh/cluster/east/node/n-1.rack",
		"spiffe://fedmesh/controlplane/cp1",
		"spiffe://fedmesh/cluster/a%2Fb/syncer",
		"spiffe://fedmesh/cluster//node/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrincipal(s)
		if err != nil {
			if !errors.Is(err, ErrBadPrincipal) {
				t.Fatalf("error %v does not wrap ErrBadPrincipal", err)
			}
			return
		}
		if p.String() != s {
			t.Fatalf("ParsePrincipal(%q) re-encodes as %q", s, p.String())
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed principal does not validate: %v", err)
		}
		if p.URI().String() != s {
			t.Fatalf("URI of %q is %q", s, p.URI())
		}
	})
}

// FuzzParseToken: no panic; a token that parses names a valid principal,
// and a token that verifies was signed by the key (random input never
// verifies against a fresh key).
func FuzzParseToken(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	exp := time.Unix(4102444800, 0) // 2100-01-01
	for _, c := range [][2]string{{"a", ""}, {"east-1", "node-1.rack2"}} {
		tok, _, err := NewToken(key, c[0], c[1], exp)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tok)
	}
	f.Add("fmjt1..")
	f.Add("fmjt1.AAAA.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		tk, err := ParseToken(s)
		if err != nil {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("error %v does not wrap ErrBadToken", err)
			}
			return
		}
		if err := tk.Principal().Validate(); err != nil {
			t.Fatalf("parsed token names an invalid principal: %v", err)
		}
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if _, err := VerifyToken(s, &other.PublicKey, time.Unix(0, 0)); err == nil {
			t.Fatalf("token %q verified against an unrelated key", s)
		}
	})
}
