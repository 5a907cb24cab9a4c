package peering

import (
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// FuzzParseFilter feeds arbitrary encoded BGPFilters to the parser: it
// never panics, and a filter it accepts has only rules the matcher and the
// GoBGP compiler can take (a family, canonical CIDRs of that family, a
// non-empty length range inside the family).
func FuzzParseFilter(f *testing.F) {
	for _, fl := range []*fedmeshv1.BGPFilter{validFilter(), {Name: "x", ImportV6: []*fedmeshv1.BGPFilterRule{{Cidr: "fd00::/8", MatchOperator: 3, Action: 1}}}} {
		b, _ := proto.Marshal(fl)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pb := &fedmeshv1.BGPFilter{}
		if proto.Unmarshal(b, pb) != nil {
			return
		}
		flt, errs := ParseFilter(nil, pb)
		if len(errs) > 0 {
			return
		}
		for _, r := range append(flt.Export(), flt.Import()...) {
			max := 32
			if r.Family == IPv6 {
				max = 128
			}
			switch {
			case r.Action != Accept && r.Action != Reject:
				t.Fatalf("rule %v: no action", r)
			case r.Op == MatchAny && r.CIDR.IsValid():
				t.Fatalf("rule %v: a CIDR without operator", r)
			case r.Op != MatchAny && (r.CIDR != r.CIDR.Masked() || FamilyOf(r.CIDR.Addr()) != r.Family):
				t.Fatalf("rule %v: CIDR not canonical or of another family", r)
			case (r.Op == MatchIn || r.Op == MatchNotIn) && (int(r.MinLen) < r.CIDR.Bits() || r.MinLen > r.MaxLen || int(r.MaxLen) > max):
				t.Fatalf("rule %v: bad length range", r)
			}
			r.Matches(netip.MustParsePrefix("10.0.0.0/8"))
		}
	})
}

// FuzzValidatePeer: the peer validator never panics, and a peer it
// accepts parses into a usable address and ASN.
func FuzzValidatePeer(f *testing.F) {
	b, _ := proto.Marshal(validPeer())
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		pb := &fedmeshv1.BGPPeerConfig{}
		if proto.Unmarshal(b, pb) != nil {
			return
		}
		if ValidatePeer(pb) != nil {
			return
		}
		p, errs := ParsePeer(nil, pb)
		if len(errs) > 0 || !p.Address.IsValid() || ASNProblem(p.ASN) != "" {
			t.Fatalf("accepted peer parses to %+v (%v)", p, errs)
		}
		Selects(pb, map[string]string{"a": "b"}, nil)
	})
}
