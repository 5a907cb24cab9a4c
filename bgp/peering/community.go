package peering

import (
	"fmt"
	"strconv"
	"strings"
)

// Community is a standard community (RFC 1997), high 16 bits the ASN.
type Community uint32

// ParseCommunity parses "ASN:VALUE" with both halves in 0..65535.
func ParseCommunity(s string) (Community, error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, fmt.Errorf("parse community %q: want ASN:VALUE", s)
	}
	hi, err1 := strconv.ParseUint(a, 10, 16)
	lo, err2 := strconv.ParseUint(b, 10, 16)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse community %q: both halves must be 0..65535", s)
	}
	return Community(hi<<16 | lo), nil
}

func (c Community) String() string { return fmt.Sprintf("%d:%d", uint32(c)>>16, uint32(c)&0xffff) }

// MarshalText encodes as "ASN:VALUE".
func (c Community) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText decodes "ASN:VALUE".
func (c *Community) UnmarshalText(b []byte) error {
	v, err := ParseCommunity(string(b))
	*c = v
	return err
}

// LargeCommunity is GLOBAL:LOCAL1:LOCAL2 (RFC 8092).
type LargeCommunity struct {
	Global, Local1, Local2 uint32
}

// ParseLargeCommunity parses "GLOBAL:LOCAL1:LOCAL2", each 32 bits.
func ParseLargeCommunity(s string) (LargeCommunity, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return LargeCommunity{}, fmt.Errorf("parse large community %q: want GLOBAL:LOCAL1:LOCAL2", s)
	}
	var v [3]uint32
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return LargeCommunity{}, fmt.Errorf("parse large community %q: each part must be 0..4294967295", s)
		}
		v[i] = uint32(n)
	}
	return LargeCommunity{v[0], v[1], v[2]}, nil
}

func (l LargeCommunity) String() string { return fmt.Sprintf("%d:%d:%d", l.Global, l.Local1, l.Local2) }

// Compare orders large communities by global, then local parts.
func (l LargeCommunity) Compare(o LargeCommunity) int {
	switch {
	case l.Global != o.Global:
		return cmpU32(l.Global, o.Global)
	case l.Local1 != o.Local1:
		return cmpU32(l.Local1, o.Local1)
	}
	return cmpU32(l.Local2, o.Local2)
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// MarshalText encodes as "GLOBAL:LOCAL1:LOCAL2".
func (l LargeCommunity) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText decodes "GLOBAL:LOCAL1:LOCAL2".
func (l *LargeCommunity) UnmarshalText(b []byte) error {
	v, err := ParseLargeCommunity(string(b))
	*l = v
	return err
}
