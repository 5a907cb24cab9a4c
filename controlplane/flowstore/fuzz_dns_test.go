package flowstore

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

var knownDNSFields = []string{"filter.cluster", "filter.namespace", "filter.pod", "filter.node", "filter.name", "filter.verdict", "filter.rcode", "since", "until", "limit"}

// FuzzParseDNSQuery: any request is either accepted, with a filter that
// matches a record built from its own fields, or refused with a
// validation error naming only known fields; never a panic.
func FuzzParseDNSQuery(f *testing.F) {
	f.Add("a", "demo", "demo/web", "node-1", "*.example.com.", "NXDOMAIN", int32(2), int64(0), int64(3600), false, uint32(10))
	f.Add("", "", "web", "", "Example.COM", "", int32(0), int64(-5), int64(-10), true, uint32(0))
	f.Add("A", "x/y", "/", "-", "a.*.b", "maybe", int32(9), int64(1<<40), int64(0), true, uint32(1<<31))
	f.Fuzz(func(t *testing.T, cluster, ns, pod, node, name, rcode string, verdict int32, since, until int64, follow bool, limit uint32) {
		req := &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Cluster: cluster, Namespace: ns, Pod: pod, Node: node, Name: name, Rcode: rcode,
			Verdict: fedmeshv1.DNSPolicyVerdict(verdict)}, Follow: follow, Limit: limit}
		if since != 0 {
			req.Since = &timestamppb.Timestamp{Seconds: since}
		}
		if until != 0 {
			req.Until = &timestamppb.Timestamp{Seconds: until}
		}
		q, err := ParseDNSQuery(req)
		checkDNSFields(t, err)
		if err != nil {
			return
		}
		// The accepted filter matches a record that has what it asks for.
		r := &fedmeshv1.DNSRecord{Cluster: q.Filter.Cluster, Node: q.Filter.Node, Namespace: q.Filter.Namespace, Pod: q.Filter.Pod,
			Verdict: q.Filter.Verdict, Rcode: q.Filter.Rcode, Name: q.Filter.Name}
		if q.Filter.PodNamespace != "" {
			r.Namespace = q.Filter.PodNamespace
		}
		if rest, ok := cutWildcard(q.Filter.Name); ok {
			r.Name = "x." + rest + "."
		}
		if !q.Filter.Matches(r, Scope{Cluster: q.Filter.Cluster}) {
			t.Fatalf("accepted filter %+v does not match a record made of its own fields", q.Filter)
		}
	})
}

func checkDNSFields(t *testing.T, err error) {
	if err == nil {
		return
	}
	fes := model.FieldErrors(err)
	if len(fes) == 0 {
		t.Fatalf("error %v is not a validation error", err)
	}
	for _, fe := range fes {
		if !slices.Contains(knownDNSFields, fe.Field) || strings.TrimSpace(fe.ErrorBody()) == "" {
			t.Fatalf("field error %q names an unknown field or no reason", fe.Error())
		}
	}
}

func cutWildcard(n string) (string, bool) {
	if len(n) > 2 && n[:2] == "*." {
		return n[2:], true
	}
	return "", false
}
