package peering

import (
	"fmt"
	"net/netip"

	"k8s.io/apimachinery/pkg/util/validation/field"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Family is an address family a filter rule applies to.
type Family uint8

// Address families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// FamilyOf is the family of an address.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// maxLen is the longest prefix of the family.
func (f Family) maxLen() int {
	if f == IPv4 {
		return 32
	}
	return 128
}

func (f Family) String() string {
	if f == IPv4 {
		return "IPv4"
	}
	return "IPv6"
}

// Action is what a matching rule does with a route.
type Action uint8

// Rule actions.
const (
	Accept Action = iota + 1
	Reject
)

func (a Action) String() string {
	if a == Accept {
		return "accept"
	}
	return "reject"
}

// MatchOp compares a route's prefix with a rule's CIDR.
type MatchOp uint8

// Match operators; MatchAny is a rule without a CIDR.
const (
	MatchAny MatchOp = iota
	MatchEqual
	MatchIn
	MatchNotIn
)

var matchOpNames = [...]string{"any", "equal", "in", "not-in"}

func (m MatchOp) String() string {
	if int(m) < len(matchOpNames) {
		return matchOpNames[m]
	}
	return fmt.Sprintf("match(%d)", uint8(m))
}

// Rule is one parsed BGPFilterRule of one family. For MatchIn and
// MatchNotIn, MinLen and MaxLen are explicit (the defaults filled in), so
// equal rules compare equal.
type Rule struct {
	Family Family
	Op     MatchOp
	CIDR   netip.Prefix // zero for MatchAny
	MinLen uint8
	MaxLen uint8
	Action Action
}

func (r Rule) String() string {
	switch r.Op {
	case MatchAny:
		return fmt.Sprintf("%s %s any", r.Action, r.Family)
	case MatchEqual:
		return fmt.Sprintf("%s %s %s", r.Action, r.Op, r.CIDR)
	}
	return fmt.Sprintf("%s %s %s{%d,%d}", r.Action, r.Op, r.CIDR, r.MinLen, r.MaxLen)
}

// Matches reports whether the rule matches a route to p: p of the rule's
// family and, by Op, equal to CIDR (MatchEqual), inside CIDR with a length
// in MinLen..MaxLen (MatchIn), or not so (MatchNotIn).
func (r Rule) Matches(p netip.Prefix) bool {
	if FamilyOf(p.Addr()) != r.Family {
		return false
	}
	switch r.Op {
	case MatchAny:
		return true
	case MatchEqual:
		return p == r.CIDR
	}
	in := r.CIDR.Bits() <= p.Bits() && r.CIDR.Contains(p.Addr()) &&
		p.Bits() >= int(r.MinLen) && p.Bits() <= int(r.MaxLen)
	return in == (r.Op == MatchIn)
}

// Decide runs rules in order on a route to p: the first matching rule's
// action, and true; false when none matches (the route is accepted).
func Decide(rules []Rule, p netip.Prefix) (Action, bool) {
	for _, r := range rules {
		if r.Matches(p) {
			return r.Action, true
		}
	}
	return 0, false
}

// Filter is a parsed BGPFilter.
type Filter struct {
	Name     string
	ExportV4 []Rule
	ImportV4 []Rule
	ExportV6 []Rule
	ImportV6 []Rule
}

// Export returns the filter's export rules of both families.
func (f Filter) Export() []Rule { return append(append([]Rule(nil), f.ExportV4...), f.ExportV6...) }

// Import returns the filter's import rules of both families.
func (f Filter) Import() []Rule { return append(append([]Rule(nil), f.ImportV4...), f.ImportV6...) }

// maxRules bounds each rule list of a filter.
const maxRules = 256

// ParseFilter parses a BGPFilter, returning every problem as a field error
// under p ("filter").
func ParseFilter(p *field.Path, f *fedmeshv1.BGPFilter) (Filter, field.ErrorList) {
	if f == nil {
		return Filter{}, field.ErrorList{field.Required(p, "")}
	}
	errs := dnsLabel(p.Child("name"), f.GetName())
	out := Filter{Name: f.GetName()}
	lists := []struct {
		name string
		fam  Family
		in   []*fedmeshv1.BGPFilterRule
		out  *[]Rule
	}{
		{"exportV4", IPv4, f.GetExportV4(), &out.ExportV4},
		{"importV4", IPv4, f.GetImportV4(), &out.ImportV4},
		{"exportV6", IPv6, f.GetExportV6(), &out.ExportV6},
		{"importV6", IPv6, f.GetImportV6(), &out.ImportV6},
	}
	for _, l := range lists {
		lp := p.Child(l.name)
		if len(l.in) > maxRules {
			errs = append(errs, field.TooMany(lp, len(l.in), maxRules))
			continue
		}
		for i, r := range l.in {
			rule, e := parseRule(lp.Index(i), l.fam, r)
			errs = append(errs, e...)
			*l.out = append(*l.out, rule)
		}
	}
	return out, errs
}

func parseRule(p *field.Path, fam Family, r *fedmeshv1.BGPFilterRule) (Rule, field.ErrorList) {
	var errs field.ErrorList
	out := Rule{Family: fam}
	switch r.GetAction() {
	case fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_ACCEPT:
		out.Action = Accept
	case fedmeshv1.BGPFilterAction_BGP_FILTER_ACTION_REJECT:
		out.Action = Reject
	default:
		errs = append(errs, field.NotSupported(p.Child("action"), r.GetAction().String(), []string{"BGP_FILTER_ACTION_ACCEPT", "BGP_FILTER_ACTION_REJECT"}))
	}
	switch r.GetMatchOperator() {
	case fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_UNSPECIFIED:
		out.Op = MatchAny
	case fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_EQUAL:
		out.Op = MatchEqual
	case fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_IN:
		out.Op = MatchIn
	case fedmeshv1.BGPFilterMatchOperator_BGP_FILTER_MATCH_OPERATOR_NOT_IN:
		out.Op = MatchNotIn
	default:
		errs = append(errs, field.NotSupported(p.Child("matchOperator"), r.GetMatchOperator().String(),
			[]string{"BGP_FILTER_MATCH_OPERATOR_EQUAL", "BGP_FILTER_MATCH_OPERATOR_IN", "BGP_FILTER_MATCH_OPERATOR_NOT_IN"}))
		return out, errs
	}
	cidrPath := p.Child("cidr")
	if r.GetCidr() == "" {
		if out.Op != MatchAny {
			errs = append(errs, field.Required(cidrPath, "a match operator compares the route with a CIDR"))
		}
		if r.GetPrefixLength() != nil {
			errs = append(errs, field.Forbidden(p.Child("prefixLength"), "a prefix-length range needs a CIDR and the IN or NOT_IN operator"))
		}
		return out, errs
	}
	if out.Op == MatchAny {
		errs = append(errs, field.Required(p.Child("matchOperator"), "a CIDR needs an operator: EQUAL, IN or NOT_IN"))
		return out, errs
	}
	c, err := netip.ParsePrefix(r.GetCidr())
	switch {
	case err != nil:
		errs = append(errs, field.Invalid(cidrPath, r.GetCidr(), "not a CIDR prefix"))
		return out, errs
	case c.Addr().Zone() != "" || c.Addr().Is4In6():
		errs = append(errs, field.Invalid(cidrPath, r.GetCidr(), "must be a plain IPv4 or IPv6 prefix"))
		return out, errs
	case FamilyOf(c.Addr()) != fam:
		errs = append(errs, field.Invalid(cidrPath, r.GetCidr(), fmt.Sprintf("is not an %s prefix, as every rule of this list must be", fam)))
		return out, errs
	case c != c.Masked():
		errs = append(errs, field.Invalid(cidrPath, r.GetCidr(), fmt.Sprintf("host bits must be zero (did you mean %s?)", c.Masked())))
		return out, errs
	}
	out.CIDR = c
	if out.Op == MatchEqual {
		if r.GetPrefixLength() != nil {
			errs = append(errs, field.Forbidden(p.Child("prefixLength"), "EQUAL matches the CIDR's own length; use IN with a range"))
		}
		return out, errs
	}
	out.MinLen, out.MaxLen = uint8(c.Bits()), uint8(fam.maxLen())
	if pl := r.GetPrefixLength(); pl != nil {
		lp := p.Child("prefixLength")
		if m := pl.GetMin(); m != 0 {
			if m < uint32(c.Bits()) || m > uint32(fam.maxLen()) {
				errs = append(errs, field.Invalid(lp.Child("min"), m, fmt.Sprintf("must be in %d..%d (the CIDR's length to the family's longest)", c.Bits(), fam.maxLen())))
			} else {
				out.MinLen = uint8(m)
			}
		}
		if m := pl.GetMax(); m != 0 {
			if m < uint32(c.Bits()) || m > uint32(fam.maxLen()) {
				errs = append(errs, field.Invalid(lp.Child("max"), m, fmt.Sprintf("must be in %d..%d (the CIDR's length to the family's longest)", c.Bits(), fam.maxLen())))
			} else {
				out.MaxLen = uint8(m)
			}
		}
		if out.MinLen > out.MaxLen {
			errs = append(errs, field.Invalid(lp, fmt.Sprintf("%d..%d", out.MinLen, out.MaxLen), "min must not exceed max"))
		}
	}
	return out, errs
}
