package policy

import "strings"

// MatchDomainName reports whether name matches a ClusterNetworkPolicy
// domainNames pattern with the upstream semantics (v1alpha2 DomainName): an
// exact name matches only itself; "*.example.com" matches every name with
// ONE OR MORE entire labels before ".example.com" ("a.example.com",
// "b.a.example.com"), never "example.com" itself nor a partial label
// ("myexample.com"). Both are compared case-insensitively, ignoring one
// trailing dot on either side (DNS names are absolute). An empty name or
// pattern matches nothing.
func MatchDomainName(pattern, name string) bool {
	pattern = strings.TrimSuffix(pattern, ".")
	name = strings.TrimSuffix(name, ".")
	if pattern == "" || name == "" {
		return false
	}
	if suffix, ok := strings.CutPrefix(pattern, "*."); ok {
		if suffix == "" || len(name) <= len(suffix)+1 {
			return false
		}
		// name is <one or more labels>.<suffix>: the byte before the
		// suffix is a label boundary and the labels before it are not
		// empty (len check above).
		cut := len(name) - len(suffix)
		return name[cut-1] == '.' && name[0] != '.' && strings.EqualFold(name[cut:], suffix)
	}
	return strings.EqualFold(pattern, name)
}

// CanonicalDomainName is the form NameRule.Names and dataplane.LearnedAddr
// carry: lower case, without the trailing dot.
func CanonicalDomainName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}
