package flowstore

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Limits of a query.
const (
	DefaultLimit   = 1000
	MaxLimit       = 100000
	MaxWindows     = 1000
	MinWindow      = time.Second
	DefaultSummary = time.Hour
)

// PolicyRef names a policy in a filter. Cluster is nil when the filter did
// not say (a policy of any owner); a pointer to "" means federated.
type PolicyRef struct {
	Cluster   *string
	Namespace *string
	Name      string
}

// Filter is a validated FlowFilter. Empty fields match everything.
type Filter struct {
	Cluster, Namespace string
	// PodNamespace is set when the pod was given as namespace/name.
	PodNamespace, Pod string
	Verdict           fedmeshv1.Verdict
	Policy            *PolicyRef
	Node              string
	// DNSName matches the name a flow's destination was resolved from:
	// canonical (CanonicalNamePattern), an exact name or "*." and a name.
	DNSName string
}

// Query is a validated GetFlows request.
type Query struct {
	Filter Filter
	// Since and Until bound the flows' times (zero: unbounded).
	Since, Until time.Time
	Follow       bool
	Limit        int
}

// Summary is a validated GetFlowSummary request.
type Summary struct {
	Filter       Filter
	Since, Until time.Time
	// Window is the width of each count (Until-Since for one window).
	Window time.Duration
}

// ParseQuery validates a GetFlows request at the API edge. Its error is a
// *model.ValidationError (InvalidArgument naming each bad field).
func ParseQuery(req *fedmeshv1.GetFlowsRequest) (Query, error) {
	var errs field.ErrorList
	q := Query{Follow: req.GetFollow(), Limit: int(req.GetLimit())}
	q.Filter, errs = parseFilter(field.NewPath("filter"), req.GetFilter())
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
		errs = append(errs, field.Invalid(field.NewPath("limit"), q.Limit, fmt.Sprintf("at most %d flows per query; narrow the filter or the time range", MaxLimit)))
	}
	return q, model.AsError(errs)
}

// ParseSummary validates a GetFlowSummary request; now fills an unset
// range (the last hour).
func ParseSummary(req *fedmeshv1.GetFlowSummaryRequest, now time.Time) (Summary, error) {
	var errs field.ErrorList
	s := Summary{}
	s.Filter, errs = parseFilter(field.NewPath("filter"), req.GetFilter())
	var e field.ErrorList
	s.Since, s.Until, e = parseRange(req.GetSince(), req.GetUntil())
	errs = append(errs, e...)
	if len(errs) > 0 {
		return s, model.AsError(errs)
	}
	if s.Until.IsZero() {
		s.Until = now
	}
	if s.Since.IsZero() {
		s.Since = s.Until.Add(-DefaultSummary)
	}
	if !s.Since.Before(s.Until) {
		return s, model.AsError(field.ErrorList{field.Invalid(field.NewPath("since"), s.Since.Format(time.RFC3339Nano), "must be before until (or now when until is unset)")})
	}
	span := s.Until.Sub(s.Since)
	s.Window = span
	if w := req.GetWindow(); w != nil {
		p := field.NewPath("window")
		if err := w.CheckValid(); err != nil {
			return s, model.AsError(field.ErrorList{field.Invalid(p, w.String(), err.Error())})
		}
		d := w.AsDuration()
		switch {
		case d < MinWindow:
			errs = append(errs, field.Invalid(p, d.String(), fmt.Sprintf("at least %v", MinWindow)))
		case span/d >= MaxWindows:
			errs = append(errs, field.Invalid(p, d.String(), fmt.Sprintf("gives %d windows over %v; at most %d: widen the window or shorten the range", span/d+1, span, MaxWindows)))
		default:
			s.Window = d
		}
	}
	return s, model.AsError(errs)
}

// SummaryWindow builds a GetFlowSummaryRequest window field; a helper for
// clients.
func SummaryWindow(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func parseRange(since, until *timestamppb.Timestamp) (s, u time.Time, errs field.ErrorList) {
	if since != nil {
		if err := since.CheckValid(); err != nil {
			errs = append(errs, field.Invalid(field.NewPath("since"), since.String(), err.Error()))
		} else {
			s = since.AsTime()
		}
	}
	if until != nil {
		if err := until.CheckValid(); err != nil {
			errs = append(errs, field.Invalid(field.NewPath("until"), until.String(), err.Error()))
		} else {
			u = until.AsTime()
		}
	}
	if len(errs) == 0 && !s.IsZero() && !u.IsZero() && u.Before(s) {
		errs = append(errs, field.Invalid(field.NewPath("until"), u.Format(time.RFC3339Nano), "is before since "+s.Format(time.RFC3339Nano)))
	}
	return s, u, errs
}

func parseFilter(p *field.Path, f *fedmeshv1.FlowFilter) (Filter, field.ErrorList) {
	var out Filter
	var errs field.ErrorList
	if v := f.GetCluster(); v != "" {
		errs = append(errs, dnsLabel(p.Child("cluster"), v)...)
		out.Cluster = v
	}
	if v := f.GetNamespace(); v != "" {
		errs = append(errs, dnsLabel(p.Child("namespace"), v)...)
		out.Namespace = v
	}
	if v := f.GetNode(); v != "" {
		errs = append(errs, dnsSubdomain(p.Child("node"), v)...)
		out.Node = v
	}
	if v := f.GetPod(); v != "" {
		pp := p.Child("pod")
		ns, name, has := strings.Cut(v, "/")
		if !has {
			name, ns = ns, ""
		} else {
			errs = append(errs, dnsLabel(pp, ns)...)
			if out.Namespace != "" && ns != out.Namespace {
				errs = append(errs, field.Invalid(pp, v, fmt.Sprintf("namespace %q differs from the filter's namespace %q", ns, out.Namespace)))
			}
		}
		errs = append(errs, dnsSubdomain(pp, name)...)
		out.PodNamespace, out.Pod = ns, name
	}
	switch v := f.GetVerdict(); v {
	case fedmeshv1.Verdict_VERDICT_UNSPECIFIED, fedmeshv1.Verdict_VERDICT_ALLOW, fedmeshv1.Verdict_VERDICT_DENY:
		out.Verdict = v
	default:
		errs = append(errs, field.NotSupported(p.Child("verdict"), int32(v), []string{"VERDICT_ALLOW", "VERDICT_DENY"}))
	}
	if v := f.GetPolicy(); v != "" {
		ref, e := parsePolicy(p.Child("policy"), v)
		errs = append(errs, e...)
		out.Policy = ref
	}
	if v := f.GetDnsName(); v != "" {
		name, err := CanonicalNamePattern(v)
		if err != nil {
			errs = append(errs, field.Invalid(p.Child("dnsName"), v, err.Error()))
		}
		out.DNSName = name
	}
	return out, errs
}

// parsePolicy reads "name", "namespace/name" or "cluster/namespace/name";
// an empty cluster segment means federated, an empty namespace segment a
// federated policy without namespace.
func parsePolicy(p *field.Path, v string) (*PolicyRef, field.ErrorList) {
	parts := strings.Split(v, "/")
	ref := &PolicyRef{}
	var errs field.ErrorList
	switch len(parts) {
	case 1:
		ref.Name = parts[0]
	case 2:
		ref.Namespace, ref.Name = &parts[0], parts[1]
	case 3:
		ref.Cluster, ref.Namespace, ref.Name = &parts[0], &parts[1], parts[2]
	default:
		return nil, field.ErrorList{field.Invalid(p, v, "want name, namespace/name or cluster/namespace/name")}
	}
	errs = append(errs, dnsSubdomain(p, ref.Name)...)
	if ref.Namespace != nil && *ref.Namespace != "" {
		errs = append(errs, dnsLabel(p, *ref.Namespace)...)
	}
	if ref.Cluster != nil && *ref.Cluster != "" {
		errs = append(errs, dnsLabel(p, *ref.Cluster)...)
	}
	if ref.Namespace != nil && *ref.Namespace == "" && (ref.Cluster == nil || *ref.Cluster != "") {
		errs = append(errs, field.Invalid(p, v, "an empty namespace names a federated policy: write it //name"))
	}
	return ref, errs
}

// Matches reports whether the policy key k is the one ref names.
func (ref *PolicyRef) Matches(k *fedmeshv1.PolicyKey) bool {
	if k.GetName() != ref.Name {
		return false
	}
	if ref.Namespace != nil && *ref.Namespace != k.GetNamespace() {
		return false
	}
	return ref.Cluster == nil || *ref.Cluster == k.GetCluster()
}

func dnsLabel(p *field.Path, v string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(v) {
		errs = append(errs, field.Invalid(p, v, msg))
	}
	return errs
}

func dnsSubdomain(p *field.Path, v string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Subdomain(v) {
		errs = append(errs, field.Invalid(p, v, msg))
	}
	return errs
}
