package store

import (
	"fmt"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// rolloutStats is what a Deployment rollout did to identities.
type rolloutStats struct {
	created int // identity numbers handed out during the rollout
	max     int // most identities in use at once
	final   int // identities in use at the end
	moved   int // endpoints whose identity changed while they existed
}

func rolloutPod(hash string, i int) *fedmeshv1.Endpoint {
	return &fedmeshv1.Endpoint{Namespace: "shop", Name: fmt.Sprintf("web-%s-%04d", hash, i), Node: "n1",
		Ips:    []string{fmt.Sprintf("10.1.%d.%d", i/250+(map[string]int{"h1": 0, "h2": 8}[hash]), i%250+1)},
		Labels: map[string]string{"app": "web", "team": "shop", "pod-template-hash": hash}}
}

// rollout runs a Deployment of pods web-h1-* through a rolling update to
// web-h2-*: 100 new pods up, then 100 old ones down, until none is left,
// as the ReplicaSet controller's surge does. With policy set, a policy
// selecting pod-template-hash=h2 as a peer is stored first.
func rollout(tb testing.TB, pods int, policy bool) rolloutStats {
	s := NewState(DefaultEventLogSize)
	must := func(c Command) *Result {
		r := s.Apply(c)
		if r.Err != nil {
			tb.Fatal(r.Err)
		}
		return r
	}
	must(cluster("a", "10.1.0.0/16"))
	if policy {
		p := &fedmeshv1.Policy{Kind: fedmeshv1.PolicyKind_POLICY_KIND_KUBERNETES, Cluster: "a", Namespace: "shop", Name: "from-new-web",
			Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Ingress: []*fedmeshv1.NetworkPolicyIngressRule{{From: []*fedmeshv1.NetworkPolicyPeer{{PodSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"pod-template-hash": "h2"}}}}}}}}
		must(applyPolicies("a", p))
	}
	for k := 0; k < pods; k += 100 {
		req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "a"}
		for i := k; i < min(k+100, pods); i++ {
			req.Endpoints = append(req.Endpoints, rolloutPod("h1", i))
		}
		must(Command{Type: CmdUpsertEndpointsFull, Payload: req})
	}
	var st rolloutStats
	next := s.ids.a.Next()
	ids := map[string]uint32{}
	track := func(rev uint64) {
		batches, _ := s.Log().Since(rev-1, 1)
		for _, b := range batches {
			for _, e := range b.Events {
				x := e.GetEndpoint()
				if x == nil {
					continue
				}
				if e.GetType() == fedmeshv1.EventType_EVENT_TYPE_DELETE {
					delete(ids, x.GetName())
					continue
				}
				if old, ok := ids[x.GetName()]; ok && old != x.GetIdentity() {
					st.moved++
				}
				ids[x.GetName()] = x.GetIdentity()
			}
		}
		st.max = max(st.max, s.ids.Len())
	}
	for k := 0; k < pods; k += 100 {
		up := &fedmeshv1.UpsertEndpointsRequest{Cluster: "a"}
		down := &fedmeshv1.DeleteEndpointsRequest{Cluster: "a"}
		for i := k; i < min(k+100, pods); i++ {
			up.Endpoints = append(up.Endpoints, rolloutPod("h2", i))
			down.Keys = append(down.Keys, &fedmeshv1.EndpointKey{Namespace: "shop", Name: rolloutPod("h1", i).GetName()})
		}
		track(must(Command{Type: CmdUpsertEndpointsFull, Payload: up}).Revision)
		track(must(Command{Type: CmdDeleteEndpoints, Payload: down}).Revision)
	}
	st.created = int(s.ids.a.Next() - next)
	st.final = s.ids.Len()
	if err := checkInvariants(s); err != nil {
		tb.Fatal(err)
	}
	return st
}

func TestRolloutOf1000PodsCreatesNoIdentityWhileNoPolicySelectsPodTemplateHash(t *testing.T) {
	tests := []struct {
		name   string
		policy bool
		want   rolloutStats
	}{
		// One identity throughout: the hash does not count.
		{"no policy on pod-template-hash", false, rolloutStats{created: 0, max: 1, final: 1, moved: 0}},
		// The new ReplicaSet gets one identity of its own; the old one
		// goes with its last pod. No pod changes identity while it lives.
		{"a policy selects pod-template-hash", true, rolloutStats{created: 1, max: 2, final: 1, moved: 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := rollout(t, 1000, tc.policy); got != tc.want {
				t.Fatalf("rollout of 1,000 pods: %+v, want %+v", got, tc.want)
			}
		})
	}
}

// BenchmarkRollingUpdateIdentityChurn reports identity count and churn of
// a 1,000-pod Deployment rollout (100 up, 100 down, repeated), without and
// with a policy selecting on pod-template-hash: identities handed out, the
// most in use at once, and endpoints whose identity changed under them.
func BenchmarkRollingUpdateIdentityChurn(b *testing.B) {
	for _, policy := range []bool{false, true} {
		b.Run(fmt.Sprintf("policy-on-pod-template-hash=%v", policy), func(b *testing.B) {
			var st rolloutStats
			for b.Loop() {
				st = rollout(b, 1000, policy)
			}
			b.ReportMetric(float64(st.created), "identities-created")
			b.ReportMetric(float64(st.max), "max-identities")
			b.ReportMetric(float64(st.moved), "endpoints-moved")
		})
	}
}
