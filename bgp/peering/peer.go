package peering

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Limits of a BGPPeerConfig.
const (
	maxFilters       = 32
	maxCommunities   = 64
	MaxRestartTime   = 4095 * time.Second // 12 bits in the capability (RFC 4724 §3)
	minHoldTime      = 3 * time.Second    // RFC 4271 §4.2: zero or at least three seconds
	defaultHoldTime  = 90 * time.Second
	asTrans          = 23456      // RFC 6793; never a real ASN
	maxASN           = 4294967294 // 4294967295 is reserved (RFC 7300)
	maxPasswordPath  = 4096
	maxAdvertisement = 8
)

// PrefixClass is a kind of prefix a node originates.
type PrefixClass uint8

// Prefix classes.
const (
	ClassPodCIDR PrefixClass = iota + 1
	// ClassService is service addresses; never sent to a peer that does
	// not list it.
	ClassService
)

func (c PrefixClass) String() string {
	switch c {
	case ClassPodCIDR:
		return "pod-cidr"
	case ClassService:
		return "service"
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// Attributes are path attributes added to routes sent to a peer.
type Attributes struct {
	Communities      []Community
	LargeCommunities []LargeCommunity
	// LocalPref is set on routes to an iBGP peer when HasLocalPref.
	LocalPref    uint32
	HasLocalPref bool
}

// Empty reports whether a adds nothing.
func (a Attributes) Empty() bool {
	return len(a.Communities) == 0 && len(a.LargeCommunities) == 0 && !a.HasLocalPref
}

// Advertisement is one prefix class advertised to a peer, with the
// attributes added to its routes.
type Advertisement struct {
	Class      PrefixClass
	Attributes Attributes
	// Service says which addresses the ClassService carries.
	Service ServiceAddresses
}

// Peer is a parsed BGPPeerConfig: everything but what depends on the node
// (the local ASN a label may override, the password's content).
type Peer struct {
	Name            string
	Address         netip.Addr
	ASN             uint32
	Port            uint16
	ClusterSelector *fedmeshv1.LabelSelector
	NodeSelector    *fedmeshv1.LabelSelector
	LocalASN        uint32 // 0 = the node's
	LocalASNLabel   string
	HoldTime        time.Duration
	Keepalive       time.Duration
	// RestartTime overrides the cluster's graceful-restart time when
	// HasRestartTime (zero then turns graceful restart off).
	RestartTime          time.Duration
	HasRestartTime       bool
	MultihopTTL          uint8
	RouteReflectorClient bool
	PasswordFile         string
	// PasswordSecret is the Secret key holding the password, in the
	// cluster of each node the peer selects; nil when none.
	PasswordSecret *SecretRef
	Filters        []string
	Attributes     Attributes
	// Advertisements list the classes advertised; nil means pod CIDRs
	// with no further attributes (never service addresses).
	Advertisements []Advertisement
}

// ValidatePeer is the edge's stateless check of a peer: every problem as
// an InvalidArgument field error under "peer". That the filters exist is
// the FSM's check.
func ValidatePeer(p *fedmeshv1.BGPPeerConfig) error {
	_, errs := ParsePeer(field.NewPath("peer"), p)
	return asError(errs)
}

// ValidateFilter is the edge's stateless check of a filter.
func ValidateFilter(f *fedmeshv1.BGPFilter) error {
	_, errs := ParseFilter(field.NewPath("filter"), f)
	return asError(errs)
}

// ValidateName checks the name of a peer or filter at path p.
func ValidateName(p *field.Path, name string) error { return asError(dnsLabel(p, name)) }

// ParsePeer parses a BGPPeerConfig, returning every problem as a field
// error under p.
func ParsePeer(p *field.Path, pb *fedmeshv1.BGPPeerConfig) (Peer, field.ErrorList) {
	if pb == nil {
		return Peer{}, field.ErrorList{field.Required(p, "")}
	}
	errs := dnsLabel(p.Child("name"), pb.GetName())
	out := Peer{
		Name:                 pb.GetName(),
		ASN:                  pb.GetAsn(),
		LocalASN:             pb.GetLocalAsn(),
		LocalASNLabel:        pb.GetLocalAsnLabel(),
		ClusterSelector:      pb.GetClusterSelector(),
		NodeSelector:         pb.GetNodeSelector(),
		RouteReflectorClient: pb.GetRouteReflectorClient(),
		HoldTime:             time.Duration(pb.GetHoldTimeSeconds()) * time.Second,
		Keepalive:            time.Duration(pb.GetKeepaliveSeconds()) * time.Second,
		Filters:              pb.GetFilters(),
	}
	ap := p.Child("address")
	switch a, err := netip.ParseAddr(pb.GetAddress()); {
	case pb.GetAddress() == "":
		errs = append(errs, field.Required(ap, "the router's IPv4 or IPv6 address"))
	case err != nil:
		errs = append(errs, field.Invalid(ap, pb.GetAddress(), "not an IPv4 or IPv6 address"))
	case a.Zone() != "":
		errs = append(errs, field.Invalid(ap, pb.GetAddress(), "link-local peers with a zone are not supported; use a global address"))
	case a.IsUnspecified() || a.IsMulticast() || a.Is4In6() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		errs = append(errs, field.Invalid(ap, pb.GetAddress(), "must be a unicast IPv4 or IPv6 address"))
	default:
		out.Address = a
	}
	if r := ASNProblem(pb.GetAsn()); r != "" {
		errs = append(errs, field.Invalid(p.Child("asn"), pb.GetAsn(), r))
	}
	if pb.GetPort() > 65535 {
		errs = append(errs, field.Invalid(p.Child("port"), pb.GetPort(), "must be 0 (179) to 65535"))
	}
	out.Port = uint16(pb.GetPort())
	errs = append(errs, selector(p.Child("clusterSelector"), pb.GetClusterSelector())...)
	errs = append(errs, selector(p.Child("nodeSelector"), pb.GetNodeSelector())...)
	if a := pb.GetLocalAsn(); a != 0 {
		if r := ASNProblem(a); r != "" {
			errs = append(errs, field.Invalid(p.Child("localAsn"), a, r))
		}
	}
	if l := pb.GetLocalAsnLabel(); l != "" {
		for _, msg := range validation.IsQualifiedName(l) {
			errs = append(errs, field.Invalid(p.Child("localAsnLabel"), l, "not a label key: "+msg))
		}
	}
	if h := out.HoldTime; h != 0 && (h < minHoldTime || h > 65535*time.Second) {
		errs = append(errs, field.Invalid(p.Child("holdTimeSeconds"), pb.GetHoldTimeSeconds(), "must be 0 (90) or 3..65535"))
	}
	hold := out.HoldTime
	if hold == 0 {
		hold = defaultHoldTime
	}
	if k := out.Keepalive; k != 0 && k >= hold {
		errs = append(errs, field.Invalid(p.Child("keepaliveSeconds"), pb.GetKeepaliveSeconds(), fmt.Sprintf("must be below the hold time (%s)", hold)))
	}
	if gr := pb.GetGracefulRestart(); gr != nil {
		out.HasRestartTime = true
		out.RestartTime = time.Duration(gr.GetRestartTimeSeconds()) * time.Second
		if out.RestartTime > MaxRestartTime {
			errs = append(errs, field.Invalid(p.Child("gracefulRestart", "restartTimeSeconds"), gr.GetRestartTimeSeconds(), "must be 0 (off) to 4095"))
		}
	}
	if ttl := pb.GetEbgpMultihopTtl(); ttl > 255 {
		errs = append(errs, field.Invalid(p.Child("ebgpMultihopTtl"), ttl, "must be 0 (directly connected) to 255"))
	} else {
		out.MultihopTTL = uint8(ttl)
	}
	if pb.GetEbgpMultihopTtl() > 0 && pb.GetLocalAsn() != 0 && pb.GetLocalAsn() == pb.GetAsn() {
		errs = append(errs, field.Invalid(p.Child("ebgpMultihopTtl"), pb.GetEbgpMultihopTtl(), "eBGP multihop on an iBGP session (asn equals localAsn)"))
	}
	if pb.GetRouteReflectorClient() && pb.GetLocalAsn() != 0 && pb.GetLocalAsn() != pb.GetAsn() {
		errs = append(errs, field.Invalid(p.Child("routeReflectorClient"), true, "a route-reflector client is an iBGP peer: asn must equal localAsn"))
	}
	if pw := pb.GetPassword(); pw != nil {
		pp := p.Child("password")
		switch src := pw.GetSource().(type) {
		case *fedmeshv1.BGPPasswordRef_File:
			f := src.File
			switch {
			case f == "":
				errs = append(errs, field.Required(pp.Child("file"), "an absolute path on the node"))
			case len(f) > maxPasswordPath || !filepath.IsAbs(f) || filepath.Clean(f) != f:
				errs = append(errs, field.Invalid(pp.Child("file"), f, "must be a clean absolute path on the node"))
			default:
				out.PasswordFile = f
			}
		case *fedmeshv1.BGPPasswordRef_Secret:
			ref, e := parseSecretRef(pp.Child("secret"), src.Secret)
			errs = append(errs, e...)
			if len(e) == 0 {
				out.PasswordSecret = &ref
			}
		default:
			errs = append(errs, field.Required(pp, "set file (a path on the node) or secret (a Secret key in the node's cluster), or leave password out"))
		}
	}
	fp := p.Child("filters")
	if len(pb.GetFilters()) > maxFilters {
		errs = append(errs, field.TooMany(fp, len(pb.GetFilters()), maxFilters))
	}
	for i, f := range pb.GetFilters() {
		errs = append(errs, dnsLabel(fp.Index(i), f)...)
		if slices.Index(pb.GetFilters(), f) < i {
			errs = append(errs, field.Duplicate(fp.Index(i), f))
		}
	}
	var e field.ErrorList
	out.Attributes, e = parseAttributes(p.Child("attributes"), pb.GetAttributes())
	errs = append(errs, e...)
	advp := p.Child("advertisements")
	if len(pb.GetAdvertisements()) > maxAdvertisement {
		errs = append(errs, field.TooMany(advp, len(pb.GetAdvertisements()), maxAdvertisement))
	}
	for i, a := range pb.GetAdvertisements() {
		ip := advp.Index(i)
		var adv Advertisement
		switch a.GetClass() {
		case fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_POD_CIDR:
			adv.Class = ClassPodCIDR
		case fedmeshv1.BGPPrefixClass_BGP_PREFIX_CLASS_SERVICE:
			adv.Class = ClassService
		default:
			errs = append(errs, field.NotSupported(ip.Child("class"), a.GetClass().String(), []string{"BGP_PREFIX_CLASS_POD_CIDR", "BGP_PREFIX_CLASS_SERVICE"}))
		}
		adv.Service, e = parseServiceAddresses(ip.Child("service"), adv.Class, a.GetService())
		errs = append(errs, e...)
		if slices.ContainsFunc(out.Advertisements, func(o Advertisement) bool { return o.Class == adv.Class && adv.Class != 0 }) {
			errs = append(errs, field.Duplicate(ip.Child("class"), a.GetClass().String()))
		}
		adv.Attributes, e = parseAttributes(ip.Child("attributes"), a.GetAttributes())
		errs = append(errs, e...)
		out.Advertisements = append(out.Advertisements, adv)
	}
	return out, errs
}

func parseAttributes(p *field.Path, a *fedmeshv1.BGPRouteAttributes) (Attributes, field.ErrorList) {
	var out Attributes
	var errs field.ErrorList
	if a == nil {
		return out, nil
	}
	if n := len(a.GetCommunities()) + len(a.GetLargeCommunities()); n > maxCommunities {
		errs = append(errs, field.TooMany(p.Child("communities"), n, maxCommunities))
	}
	for i, s := range a.GetCommunities() {
		c, err := ParseCommunity(s)
		if err != nil {
			errs = append(errs, field.Invalid(p.Child("communities").Index(i), s, "want ASN:VALUE, both 0..65535"))
			continue
		}
		out.Communities = append(out.Communities, c)
	}
	for i, s := range a.GetLargeCommunities() {
		c, err := ParseLargeCommunity(s)
		if err != nil {
			errs = append(errs, field.Invalid(p.Child("largeCommunities").Index(i), s, "want GLOBAL:LOCAL1:LOCAL2, each 0..4294967295"))
			continue
		}
		out.LargeCommunities = append(out.LargeCommunities, c)
	}
	if a.LocalPreference != nil {
		out.LocalPref, out.HasLocalPref = a.GetLocalPreference(), true
	}
	return out, errs
}

// ASNProblem says what is wrong with an ASN, or "" when it is usable.
func ASNProblem(asn uint32) string {
	switch {
	case asn == 0:
		return "must be 1..4294967294"
	case asn == asTrans:
		return "23456 is AS_TRANS (RFC 6793), not a real ASN"
	case asn > maxASN:
		return "4294967295 is reserved"
	}
	return ""
}
