package flowstore

import (
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// DNSFilter is a validated fedmesh.v1.DNSFilter. Empty fields match
// everything.
type DNSFilter struct {
	Cluster, Namespace string
	// PodNamespace is set when the pod was given as namespace/name.
	PodNamespace, Pod string
	Node              string
	// Name is canonical: lower case, no trailing dot; "*.suffix" for a
	// wildcard.
	Name    string
	Verdict fedmeshv1.DNSPolicyVerdict
	Rcode   string
}

// DNSQuery is a validated GetDNS request.
type DNSQuery struct {
	Filter DNSFilter
	// Since and Until bound the records' times (zero: unbounded).
	Since, Until time.Time
	Follow       bool
	Limit        int
}

// ParseDNSQuery validates a GetDNS request at the API edge. Its error is a
// *model.ValidationError (InvalidArgument naming each bad field).
func ParseDNSQuery(req *fedmeshv1.GetDNSRequest) (DNSQuery, error) {
	q := DNSQuery{Follow: req.GetFollow(), Limit: int(req.GetLimit())}
	var errs field.ErrorList
	q.Filter, errs = parseDNSFilter(field.NewPath("filter"), req.GetFilter())
	var e field.ErrorList
	q.Since, q.Until, e = parseRange(req.GetSince(), req.GetUntil())
	errs = append(errs, e...)
	if q.Follow && req.GetUntil() != nil {
		errs = append(errs, field.Invalid(field.NewPath("until"), req.GetUntil().AsTime().Format(time.RFC3339), "a followed stream has no end; leave until unset with follow"))
	}
	switch {
	case q.Limit == 0:
		q.Limit = DefaultLimit
	case q.Limit > MaxLimit:
		errs = append(errs, field.Invalid(field.NewPath("limit"), q.Limit, fmt.Sprintf("at most %d records per query; narrow the filter or the time range", MaxLimit)))
	}
	return q, model.AsError(errs)
}

func parseDNSFilter(p *field.Path, f *fedmeshv1.DNSFilter) (DNSFilter, field.ErrorList) {
	// The workload fields are the flow filter's, with the same rules.
	wl, errs := parseFilter(p, &fedmeshv1.FlowFilter{Cluster: f.GetCluster(), Namespace: f.GetNamespace(), Pod: f.GetPod(), Node: f.GetNode()})
	out := DNSFilter{Cluster: wl.Cluster, Namespace: wl.Namespace, PodNamespace: wl.PodNamespace, Pod: wl.Pod, Node: wl.Node}
	if v := f.GetName(); v != "" {
		name, err := CanonicalNamePattern(v)
		if err != nil {
			errs = append(errs, field.Invalid(p.Child("name"), v, err.Error()))
		}
		out.Name = name
	}
	switch v := f.GetVerdict(); v {
	case fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_UNSPECIFIED, fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ALLOWED,
		fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_REFUSED, fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_UNPOLICED,
		fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ERROR, fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_DENIED:
		out.Verdict = v
	default:
		errs = append(errs, field.NotSupported(p.Child("verdict"), int32(v), []string{"DNS_POLICY_VERDICT_ALLOWED", "DNS_POLICY_VERDICT_REFUSED",
			"DNS_POLICY_VERDICT_DENIED", "DNS_POLICY_VERDICT_UNPOLICED", "DNS_POLICY_VERDICT_ERROR"}))
	}
	if v := f.GetRcode(); v != "" {
		if _, ok := dns.StringToRcode[strings.ToUpper(v)]; !ok {
			errs = append(errs, field.Invalid(p.Child("rcode"), v, "not a DNS response code; want NOERROR, NXDOMAIN, SERVFAIL, REFUSED, FORMERR, ..."))
		}
		out.Rcode = strings.ToUpper(v)
	}
	return out, errs
}

// CanonicalNamePattern checks a name filter and returns it canonical: an
// exact name, or "*." and a name, lower case without the trailing dot.
func CanonicalNamePattern(v string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(v, "."))
	rest, wild := strings.CutPrefix(n, "*.")
	if rest == "" {
		return "", fmt.Errorf("want a DNS name (api.example.com) or *. and a name (*.example.com)")
	}
	if len(rest) > 253 {
		return "", fmt.Errorf("longer than 253 characters")
	}
	for l := range strings.SplitSeq(rest, ".") {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("label %q: a label has 1 to 63 characters", l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				if c == '*' {
					return "", fmt.Errorf("a wildcard is only a leading *. (*.example.com)")
				}
				return "", fmt.Errorf("label %q: only letters, digits, '-' and '_'", l)
			}
		}
	}
	if wild {
		return "*." + rest, nil
	}
	return rest, nil
}

// Matches reports whether record r matches the filter within scope. The
// pod fields name the asking pod; the cluster is the reporting node's,
// which is the asking pod's. A name pattern matches as a domainNames rule
// does (policy.MatchDomainName), so filtering by a rule's pattern finds
// the queries the rule covers.
func (f *DNSFilter) Matches(r *fedmeshv1.DNSRecord, sc Scope) bool {
	switch {
	case sc.Cluster != "" && r.GetCluster() != sc.Cluster,
		f.Cluster != "" && r.GetCluster() != f.Cluster,
		f.Node != "" && r.GetNode() != f.Node,
		f.Namespace != "" && r.GetNamespace() != f.Namespace,
		f.Pod != "" && r.GetPod() != f.Pod,
		f.PodNamespace != "" && r.GetNamespace() != f.PodNamespace,
		f.Verdict != 0 && r.GetVerdict() != f.Verdict,
		f.Rcode != "" && r.GetRcode() != f.Rcode,
		f.Name != "" && !policy.MatchDomainName(f.Name, r.GetName()):
		return false
	}
	return true
}
