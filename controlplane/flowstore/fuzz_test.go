package flowstore

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

var knownFields = []string{"filter.cluster", "filter.namespace", "filter.pod", "filter.verdict", "filter.policy", "filter.node", "filter.dnsName", "since", "until", "limit", "window"}

// FuzzParseFilter: any request is either accepted, with a filter that
// matches a flow built from its own fields, or refused with a validation
// error naming only known fields; never a panic.
func FuzzParseFilter(f *testing.F) {
	f.Add("a", "demo", "demo/web", "b/demo/db", "node-1", int32(2), int64(0), int64(3600), false, uint32(10), int64(60))
	f.Add("", "", "web", "//allow-dns", "", int32(0), int64(-5), int64(-10), true, uint32(0), int64(0))
	f.Add("A", "x/y", "/", "a/b/c/d", "-", int32(9), int64(1<<40), int64(0), true, uint32(1<<31), int64(-1))
	f.Fuzz(func(t *testing.T, cluster, ns, pod, policy, node string, verdict int32, since, until int64, follow bool, limit uint32, window int64) {
		filter := &fedmeshv1.FlowFilter{Cluster: cluster, Namespace: ns, Pod: pod, Policy: policy, Node: node, Verdict: fedmeshv1.Verdict(verdict)}
		req := &fedmeshv1.GetFlowsRequest{Filter: filter, Follow: follow, Limit: limit}
		if since != 0 {
			req.Since = &timestamppb.Timestamp{Seconds: since}
		}
		if until != 0 {
			req.Until = &timestamppb.Timestamp{Seconds: until}
		}
		q, err := ParseQuery(req)
		checkErr(t, err)
		if err == nil {
			// The accepted filter matches a flow that has what it asks for.
			w := &fedmeshv1.Workload{Cluster: q.Filter.Cluster, Namespace: q.Filter.Namespace, Pod: q.Filter.Pod}
			if q.Filter.PodNamespace != "" {
				w.Namespace = q.Filter.PodNamespace
			}
			fl := &fedmeshv1.Flow{Source: w, Verdict: q.Filter.Verdict, Decision: &fedmeshv1.FlowDecision{}}
			if p := q.Filter.Policy; p != nil {
				k := &fedmeshv1.PolicyKey{Name: p.Name}
				if p.Namespace != nil {
					k.Namespace = *p.Namespace
				}
				if p.Cluster != nil {
					k.Cluster = *p.Cluster
				}
				fl.Decision.SelectedBy = []*fedmeshv1.PolicyKey{k}
			}
			if !matchFlow(&q.Filter, Scope{}, fl, "", q.Filter.Node) {
				t.Fatalf("accepted filter %+v does not match a flow made of its own fields", q.Filter)
			}
		}
		sreq := &fedmeshv1.GetFlowSummaryRequest{Filter: filter, Since: req.Since, Until: req.Until}
		if window != 0 {
			sreq.Window = durationpb.New(time.Duration(window))
		}
		_, err = ParseSummary(sreq, time.Unix(1<<30, 0))
		checkErr(t, err)
	})
}

func checkErr(t *testing.T, err error) {
	if err == nil {
		return
	}
	fes := model.FieldErrors(err)
	if len(fes) == 0 {
		t.Fatalf("error %v is not a validation error", err)
	}
	for _, fe := range fes {
		known := false
		for _, k := range knownFields {
			known = known || fe.Field == k
		}
		if !known || strings.TrimSpace(fe.ErrorBody()) == "" {
			t.Fatalf("field error %q names an unknown field or no reason", fe.Error())
		}
	}
}
