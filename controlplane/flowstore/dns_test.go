package flowstore

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// dnsAt is a query of pod ns/pod for name at t.
func dnsAt(t time.Time, ns, pod, name string, v fedmeshv1.DNSPolicyVerdict) *fedmeshv1.DNSRecord {
	return &fedmeshv1.DNSRecord{Time: timestamppb.New(t), Namespace: ns, Pod: pod, ClientIp: "10.1.1.11", ClientPort: 40000,
		Name: name, Type: "A", Rcode: "NOERROR", Verdict: v,
		Answers: []*fedmeshv1.DNSAnswer{{Name: name, Type: "A", Ttl: 30, Addr: "192.0.2.7"}}}
}

func names(rs []*fedmeshv1.DNSRecord) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetName())
	}
	return out
}

func TestDNSFloodFromOneNodeEvictsOnlyItsOwnRecords(t *testing.T) {
	c := &clock{t0}
	s := NewDNS(DNSConfig{Capacity: 100, NodeRate: 1e9, Now: c.Now})
	for i := range 30 {
		s.Add("b", "quiet", []*fedmeshv1.DNSRecord{dnsAt(t0.Add(time.Duration(i)), "shop", "api", "db.example.com.", 0)}, 0)
	}
	for i := range 10_000 {
		s.Add("a", "loud", []*fedmeshv1.DNSRecord{dnsAt(t0.Add(time.Duration(i)), "demo", "web", "x.example.com.", 0)}, 0)
	}
	quiet := s.Query(DNSQuery{Filter: DNSFilter{Node: "quiet"}, Limit: MaxLimit}, Scope{})
	loud := s.Query(DNSQuery{Filter: DNSFilter{Node: "loud"}, Limit: MaxLimit}, Scope{})
	if len(quiet) != 30 {
		t.Errorf("quiet node kept %d of its 30 records under a flood, want all", len(quiet))
	}
	st := s.Status()
	if st.Stored != 100 || len(loud) != 70 {
		t.Errorf("stored %d (loud %d), want the capacity 100 with the loud node holding the other 70", st.Stored, len(loud))
	}
	if st.Evicted != 10_000-70 {
		t.Errorf("evicted = %d, want %d", st.Evicted, 10_000-70)
	}
	if got := loud[len(loud)-1].GetTime().AsTime(); !got.Equal(t0.Add(9999)) {
		t.Errorf("loud node's newest kept record at %v, want its newest", got)
	}
}

func TestDNSNodeOverItsRateIsRefusedAndCounted(t *testing.T) {
	c := &clock{t0}
	s := NewDNS(DNSConfig{NodeRate: 10, NodeBurst: 10, Now: c.Now})
	batch := make([]*fedmeshv1.DNSRecord, 25)
	for i := range batch {
		batch[i] = dnsAt(t0, "demo", "web", "a.example.com.", 0)
	}
	if acc, ref := s.Add("a", "n1", batch, 0); acc != 10 || ref != 15 {
		t.Fatalf("first batch: accepted %d refused %d, want 10 and 15 (burst 10)", acc, ref)
	}
	c.now = c.now.Add(time.Second)
	if acc, ref := s.Add("a", "n1", batch[:12], 0); acc != 10 || ref != 2 {
		t.Fatalf("a second later: accepted %d refused %d, want the rate's 10 and 2", acc, ref)
	}
	// Another node has its own bucket.
	if acc, _ := s.Add("a", "n2", batch[:10], 0); acc != 10 {
		t.Fatalf("other node accepted %d, want 10", acc)
	}
	if st := s.Status(); st.DroppedRate != 17 || st.Stored != 30 {
		t.Fatalf("status %+v, want 17 refused and 30 stored", st)
	}
}

func TestDNSRecordsOlderThanMaxAgeAreEvicted(t *testing.T) {
	c := &clock{t0}
	s := NewDNS(DNSConfig{MaxAge: time.Minute, NodeRate: 1e9, Now: c.Now})
	s.Add("a", "n1", []*fedmeshv1.DNSRecord{dnsAt(t0, "demo", "web", "old.example.com.", 0)}, 0)
	c.now = t0.Add(30 * time.Second)
	s.Add("a", "n2", []*fedmeshv1.DNSRecord{dnsAt(c.now, "demo", "web", "new.example.com.", 0)}, 0)
	c.now = t0.Add(61 * time.Second)
	s.Sweep()
	got := s.Query(DNSQuery{Limit: 10}, Scope{})
	if !slices.Equal(names(got), []string{"new.example.com."}) || s.Status().Evicted != 1 {
		t.Fatalf("after a minute: %v, evicted %d; want only the newer record and one eviction", names(got), s.Status().Evicted)
	}
	c.now = t0.Add(2 * time.Minute)
	s.Sweep()
	if st := s.Status(); st.Stored != 0 || st.Nodes != 0 {
		t.Fatalf("after two minutes: %+v, want nothing stored and no node kept", st)
	}
}

func TestDNSAgentDropsAreCountedOnceAcrossBatches(t *testing.T) {
	s := NewDNS(DNSConfig{NodeRate: 1e9, Now: (&clock{t0}).Now})
	for _, d := range []uint64{3, 3, 5, 2 /* restarted agent */, 4} {
		s.Add("a", "n1", nil, d)
	}
	if got := s.Status().DroppedAgent; got != 5 {
		t.Fatalf("dropped by agent = %d, want 5 (the largest count seen)", got)
	}
}

// The batch's node is the record's, whatever the record claims: the
// server checked the batch against the shipping node's certificate.
func TestDNSRecordsTakeTheShippingNode(t *testing.T) {
	s := NewDNS(DNSConfig{NodeRate: 1e9, Now: (&clock{t0}).Now})
	r := dnsAt(t0, "demo", "web", "a.example.com.", 0)
	r.Cluster, r.Node = "b", "forged"
	r.Time = nil
	s.Add("a", "n1", []*fedmeshv1.DNSRecord{r}, 0)
	got := s.Query(DNSQuery{Limit: 1}, Scope{})
	if len(got) != 1 || got[0].GetCluster() != "a" || got[0].GetNode() != "n1" || !got[0].GetTime().AsTime().Equal(t0) {
		t.Fatalf("stored %v, want cluster a node n1 at the store's now", got)
	}
}

func dnsFixture() *DNSStore {
	s := NewDNS(DNSConfig{NodeRate: 1e9, Now: (&clock{t0.Add(time.Hour)}).Now})
	web := dnsAt(t0, "demo", "web", "api.example.com.", fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ALLOWED)
	deep := dnsAt(t0.Add(time.Second), "demo", "web", "v1.api.example.com.", fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ALLOWED)
	refused := dnsAt(t0.Add(2*time.Second), "demo", "web", "evil.test.", fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_REFUSED)
	refused.Rcode, refused.Answers = "REFUSED", nil
	s.Add("a", "n1", []*fedmeshv1.DNSRecord{web, deep, refused}, 0)
	s.Add("a", "n2", []*fedmeshv1.DNSRecord{dnsAt(t0.Add(3*time.Second), "shop", "api", "Example.COM.", fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_UNPOLICED)}, 0)
	s.Add("b", "n1", []*fedmeshv1.DNSRecord{dnsAt(t0.Add(4*time.Second), "demo", "web", "db.example.com.", 0)}, 0)
	return s
}

func TestDNSQueryMatchesEveryFilterField(t *testing.T) {
	s := dnsFixture()
	for _, tc := range []struct {
		name   string
		filter DNSFilter
		scope  Scope
		since  time.Duration
		limit  int
		want   []string
	}{
		{"everything", DNSFilter{}, Scope{}, 0, 0, []string{"api.example.com.", "v1.api.example.com.", "evil.test.", "Example.COM.", "db.example.com."}},
		{"cluster", DNSFilter{Cluster: "b"}, Scope{}, 0, 0, []string{"db.example.com."}},
		{"node", DNSFilter{Node: "n2"}, Scope{}, 0, 0, []string{"Example.COM."}},
		{"namespace", DNSFilter{Namespace: "shop"}, Scope{}, 0, 0, []string{"Example.COM."}},
		{"pod by name", DNSFilter{Pod: "api"}, Scope{}, 0, 0, []string{"Example.COM."}},
		{"pod by namespace/name in a cluster", DNSFilter{Cluster: "a", PodNamespace: "demo", Pod: "web"}, Scope{}, 0, 0, []string{"api.example.com.", "v1.api.example.com.", "evil.test."}},
		{"pod of another namespace", DNSFilter{PodNamespace: "shop", Pod: "web"}, Scope{}, 0, 0, nil},
		{"exact name, any case", DNSFilter{Name: "example.com"}, Scope{}, 0, 0, []string{"Example.COM."}},
		{"wildcard: one or more labels, not the apex", DNSFilter{Name: "*.example.com"}, Scope{}, 0, 0, []string{"api.example.com.", "v1.api.example.com.", "db.example.com."}},
		{"wildcard deeper", DNSFilter{Name: "*.api.example.com"}, Scope{}, 0, 0, []string{"v1.api.example.com."}},
		{"verdict", DNSFilter{Verdict: fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_REFUSED}, Scope{}, 0, 0, []string{"evil.test."}},
		{"rcode", DNSFilter{Rcode: "REFUSED"}, Scope{}, 0, 0, []string{"evil.test."}},
		{"since", DNSFilter{}, Scope{}, 3 * time.Second, 0, []string{"Example.COM.", "db.example.com."}},
		{"limit keeps the newest", DNSFilter{}, Scope{}, 0, 2, []string{"Example.COM.", "db.example.com."}},
		{"scope: a cluster's principal reads its cluster only", DNSFilter{}, Scope{Cluster: "b"}, 0, 0, []string{"db.example.com."}},
		{"scope and filter of another cluster", DNSFilter{Cluster: "a"}, Scope{Cluster: "b"}, 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := DNSQuery{Filter: tc.filter, Limit: MaxLimit}
			if tc.limit > 0 {
				q.Limit = tc.limit
			}
			if tc.since > 0 {
				q.Since = t0.Add(tc.since)
			}
			if got := names(s.Query(q, tc.scope)); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDNSBadRequestsNameTheField(t *testing.T) {
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	for _, tc := range []struct {
		name  string
		req   *fedmeshv1.GetDNSRequest
		field string
	}{
		{"cluster not a label", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Cluster: "A_B"}}, "filter.cluster"},
		{"namespace", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Namespace: "x y"}}, "filter.namespace"},
		{"pod namespace contradicts", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Namespace: "demo", Pod: "shop/web"}}, "filter.pod"},
		{"node", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Node: "-x"}}, "filter.node"},
		{"name with a space", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Name: "a b.com"}}, "filter.name"},
		{"name with an inner wildcard", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Name: "a.*.com"}}, "filter.name"},
		{"name that is only a wildcard", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Name: "*."}}, "filter.name"},
		{"name with an empty label", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Name: "a..com"}}, "filter.name"},
		{"name label too long", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Name: strings.Repeat("a", 64) + ".com"}}, "filter.name"},
		{"unknown verdict", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Verdict: 9}}, "filter.verdict"},
		{"unknown rcode", &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Rcode: "MAYBE"}}, "filter.rcode"},
		{"until before since", &fedmeshv1.GetDNSRequest{Since: ts(time.Hour), Until: ts(0)}, "until"},
		{"until with follow", &fedmeshv1.GetDNSRequest{Until: ts(0), Follow: true}, "until"},
		{"limit", &fedmeshv1.GetDNSRequest{Limit: MaxLimit + 1}, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDNSQuery(tc.req)
			if fields := fieldsOf(err); !slices.Contains(fields, tc.field) {
				t.Fatalf("error %v names %v, want %s", err, fields, tc.field)
			}
		})
	}
	q, err := ParseDNSQuery(&fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Cluster: "a", Namespace: "demo", Pod: "demo/web", Name: "*.Example.com.", Rcode: "nxdomain",
		Verdict: fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_REFUSED}, Since: ts(0), Follow: true})
	if err != nil || q.Filter.Name != "*.example.com" || q.Filter.Rcode != "NXDOMAIN" || q.Limit != DefaultLimit {
		t.Fatalf("a good request: %+v (%v), want it canonical with the default limit", q, err)
	}
}

func TestDNSServeSendsHistoryThenFollowsAndCountsWhatAFollowerMissed(t *testing.T) {
	s := dnsFixture()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs := make(chan *fedmeshv1.GetDNSResponse, 16)
	done := make(chan error, 1)
	go func() {
		done <- s.Serve(ctx, DNSQuery{Filter: DNSFilter{Name: "*.example.com"}, Follow: true, Limit: 1}, Scope{Cluster: "a"}, func(m *fedmeshv1.GetDNSResponse) error {
			msgs <- m
			return nil
		})
	}()
	first := <-msgs
	if first.GetStatus().GetStored() != 5 || !slices.Equal(names(first.GetRecords()), []string{"v1.api.example.com."}) {
		t.Fatalf("first message %v, want the status and the newest matching record of cluster a", first)
	}
	s.Add("b", "n1", []*fedmeshv1.DNSRecord{dnsAt(t0, "demo", "web", "b.example.com.", 0)}, 0) // other cluster: out of scope
	s.Add("a", "n1", []*fedmeshv1.DNSRecord{dnsAt(t0, "demo", "web", "other.test.", 0)}, 0)    // not matching
	s.Add("a", "n1", []*fedmeshv1.DNSRecord{dnsAt(t0, "demo", "web", "new.example.com.", 0)}, 0)
	select {
	case m := <-msgs:
		if !slices.Equal(names(m.GetRecords()), []string{"new.example.com."}) {
			t.Fatalf("followed %v, want only the new matching record of cluster a", names(m.GetRecords()))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no followed record")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// A follower that does not read loses what overflows its buffer,
	// counted.
	_, f, stop := s.QueryFollow(DNSQuery{Limit: 1}, Scope{})
	defer stop()
	batch := make([]*fedmeshv1.DNSRecord, FollowBuffer+7)
	for i := range batch {
		batch[i] = dnsAt(t0, "demo", "web", "x.test.", 0)
	}
	s.Add("a", "n3", batch, 0)
	if s.Lagged(f) != 7 || s.Status().DroppedFollow != 7 {
		t.Fatalf("lagged %d, dropped %d; want 7", s.Lagged(f), s.Status().DroppedFollow)
	}
}
