package model

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"

	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Limits that keep one request from growing the store without bound.
const (
	MaxBatch         = 5000 // objects in one batched write
	MaxCIDRsPerFam   = 1    // pod or service CIDRs per address family of a cluster or node
	MaxNamedPorts    = 64
	MaxRulesPerDir   = 256
	MaxPeersPerRule  = 256
	MaxPortsPerRule  = 256
	MaxExceptPerCIDR = 64
	MaxBGPPeers      = 16
	MaxBackends      = 10000
	maxASN           = 4294967294 // 4294967295 is reserved (RFC 7300)
	asTrans          = 23456      // RFC 6793 placeholder, never a real ASN
)

func required(errs field.ErrorList, p *field.Path, v string) (field.ErrorList, bool) {
	if v == "" {
		return append(errs, field.Required(p, "")), false
	}
	return errs, true
}

func dnsLabel(p *field.Path, v string) field.ErrorList {
	errs, ok := required(nil, p, v)
	if !ok {
		return errs
	}
	for _, msg := range validation.IsDNS1123Label(v) {
		errs = append(errs, field.Invalid(p, v, msg))
	}
	return errs
}

func dnsSubdomain(p *field.Path, v string) field.ErrorList {
	errs, ok := required(nil, p, v)
	if !ok {
		return errs
	}
	for _, msg := range validation.IsDNS1123Subdomain(v) {
		errs = append(errs, field.Invalid(p, v, msg))
	}
	return errs
}

func dns1035(p *field.Path, v string) field.ErrorList {
	errs, ok := required(nil, p, v)
	if !ok {
		return errs
	}
	for _, msg := range validation.IsDNS1035Label(v) {
		errs = append(errs, field.Invalid(p, v, msg))
	}
	return errs
}

// ClusterName validates a cluster name: a DNS-1123 label.
func ClusterName(p *field.Path, v string) field.ErrorList { return dnsLabel(p, v) }

// Namespace validates a Kubernetes namespace name: a DNS-1123 label.
func Namespace(p *field.Path, v string) field.ErrorList { return dnsLabel(p, v) }

func labels(p *field.Path, m map[string]string) field.ErrorList {
	return metav1validation.ValidateLabels(m, p)
}

// labelChecker validates label maps like labels, remembering the keys and
// values it found valid so each distinct one is checked once: pods share
// most of their labels (app, team, version...) across a batch and across
// requests, and the checks are regular expressions. Validity is a
// function of the string alone, so one process-wide cache serves every
// request. Invalid ones are never remembered, so each occurrence is
// reported at its own path. The cache is bounded: once it holds
// maxKnownLabels strings it starts over, so churning label values (hashes,
// build IDs) cost at most that much memory.
type labelChecker struct {
	mu           sync.RWMutex
	keys, values map[string]struct{}
}

const maxKnownLabels = 1 << 15

// knownLabels is the process's label checker.
var knownLabels = &labelChecker{keys: map[string]struct{}{}, values: map[string]struct{}{}}

func newLabelChecker() *labelChecker { return knownLabels }

func (lc *labelChecker) known(k, v string) (key, value bool) {
	lc.mu.RLock()
	defer lc.mu.RUnlock()
	_, key = lc.keys[k]
	_, value = lc.values[v]
	return key, value
}

func (lc *labelChecker) remember(m map[string]struct{}, s string) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if len(lc.keys)+len(lc.values) >= maxKnownLabels {
		clear(lc.keys)
		clear(lc.values)
	}
	m[s] = struct{}{}
}

// check returns what labels(p, m) returns.
func (lc *labelChecker) check(p *field.Path, m map[string]string) field.ErrorList {
	if lc == nil {
		return labels(p, m)
	}
	var errs field.ErrorList
	for k, v := range m {
		keyOK, valueOK := lc.known(k, v)
		if !keyOK {
			if e := metav1validation.ValidateLabelName(k, p); len(e) > 0 {
				errs = append(errs, e...)
			} else {
				lc.remember(lc.keys, k)
			}
		}
		if !valueOK {
			msgs := validation.IsValidLabelValue(v)
			for _, msg := range msgs {
				errs = append(errs, field.Invalid(p, v, msg))
			}
			if len(msgs) == 0 {
				lc.remember(lc.values, v)
			}
		}
	}
	return errs
}

// prefix parses a canonical CIDR. A CIDR with host bits set is rejected, as
// Kubernetes does, since "10.0.0.1/8" almost always hides a typo.
func prefix(p *field.Path, v string) (netip.Prefix, field.ErrorList) {
	if v == "" {
		return netip.Prefix{}, field.ErrorList{field.Required(p, "")}
	}
	pfx, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, field.ErrorList{field.Invalid(p, v, "must be a CIDR such as 10.0.0.0/16 or fd00::/48")}
	}
	if pfx.Addr().Zone() != "" {
		return netip.Prefix{}, field.ErrorList{field.Invalid(p, v, "must not carry an IPv6 zone")}
	}
	if pfx.Masked() != pfx {
		return netip.Prefix{}, field.ErrorList{field.Invalid(p, v, fmt.Sprintf("has host bits set; did you mean %s?", pfx.Masked()))}
	}
	return pfx, nil
}

// addr parses a unicast IP address (v4 or v6; IPv4-mapped IPv6 rejected so
// one address has one spelling).
func addr(p *field.Path, v string) (netip.Addr, field.ErrorList) {
	if v == "" {
		return netip.Addr{}, field.ErrorList{field.Required(p, "")}
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Addr{}, field.ErrorList{field.Invalid(p, v, "must be an IPv4 or IPv6 address")}
	}
	switch {
	case a.Zone() != "":
		return netip.Addr{}, field.ErrorList{field.Invalid(p, v, "must not carry an IPv6 zone")}
	case a.Is4In6():
		return netip.Addr{}, field.ErrorList{field.Invalid(p, v, "must be written as plain IPv4, not IPv4-mapped IPv6")}
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback():
		return netip.Addr{}, field.ErrorList{field.Invalid(p, v, "must be a unicast, non-loopback address")}
	}
	return a, nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// cidrList validates a list of CIDRs: each canonical, none overlapping
// another, at most perFamily of each family (0 = no limit).
func cidrList(p *field.Path, vs []string, perFamily int) ([]netip.Prefix, field.ErrorList) {
	var errs field.ErrorList
	var out []netip.Prefix
	count := map[string]int{}
	for i, v := range vs {
		pfx, e := prefix(p.Index(i), v)
		if len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		for j, prev := range out {
			if prev.Overlaps(pfx) {
				errs = append(errs, field.Invalid(p.Index(i), v, fmt.Sprintf("overlaps %s (%s)", prev, p.Index(j))))
			}
		}
		fam := family(pfx.Addr())
		count[fam]++
		if perFamily > 0 && count[fam] > perFamily {
			errs = append(errs, field.Invalid(p.Index(i), v, fmt.Sprintf("at most %d %s CIDR allowed (dual-stack is one per family)", perFamily, fam)))
		}
		out = append(out, pfx)
	}
	return out, errs
}

func port(p *field.Path, v uint32, allowZero bool) field.ErrorList {
	if v == 0 && allowZero {
		return nil
	}
	if v < 1 || v > 65535 {
		return field.ErrorList{field.Invalid(p, v, "must be between 1 and 65535, inclusive")}
	}
	return nil
}

// l4Protocol accepts the protocols Kubernetes ports may name.
func l4Protocol(p *field.Path, v fedmeshv1.Protocol) field.ErrorList {
	switch v {
	case fedmeshv1.Protocol_PROTOCOL_UNSPECIFIED, fedmeshv1.Protocol_PROTOCOL_TCP,
		fedmeshv1.Protocol_PROTOCOL_UDP, fedmeshv1.Protocol_PROTOCOL_SCTP:
		return nil
	case fedmeshv1.Protocol_PROTOCOL_ICMP:
		// Named as a Kubernetes manifest spells it, not PROTOCOL_ICMP.
		return field.ErrorList{field.NotSupported(p, "ICMP", []string{"TCP", "UDP", "SCTP"})}
	}
	return field.ErrorList{field.NotSupported(p, int32(v), []string{"TCP", "UDP", "SCTP"})}
}

func portName(p *field.Path, v string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsValidPortName(v) {
		errs = append(errs, field.Invalid(p, v, msg))
	}
	return errs
}

func tooMany(p *field.Path, n, limit int) field.ErrorList {
	if n > limit {
		return field.ErrorList{field.TooMany(p, n, limit)}
	}
	return nil
}

// NormalizeCIDR returns the canonical spelling of a valid CIDR (lower-case
// v6), so stored objects compare equal however a client spelled them.
func NormalizeCIDR(v string) string {
	if pfx, err := netip.ParsePrefix(strings.TrimSpace(v)); err == nil {
		return pfx.String()
	}
	return v
}
