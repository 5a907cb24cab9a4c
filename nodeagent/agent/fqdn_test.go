package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"log/slog"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fdns "github.com/fedmesh/fedmesh/nodeagent/dns"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The pods of these tests send their DNS queries from loopback addresses
// of their own, so the resolver tells them apart by source address as it
// does pods on a node.
const (
	podA = "c1/shop/a" // egress: only *.example.com and api.partner.io, TCP 443, by name
	podB = "c1/shop/b" // the same rules as a
	podC = "c1/shop/c" // no name rules
)

var podIPs = map[string]netip.Addr{
	podA: netip.MustParseAddr("127.0.0.11"),
	podB: netip.MustParseAddr("127.0.0.12"),
	podC: netip.MustParseAddr("127.0.0.13"),
}

// nameEgress is egress closed but for a tier Accept of names on TCP 443.
func nameEgress(names ...string) policy.DirectionRules {
	return policy.DirectionRules{Enforced: true, Names: []policy.NameRule{{
		Names: names, Proto: 6, Ports: policy.PortRange{First: 443, Last: 443},
		Rule: 1, Tier: policy.TierAdmin, Action: policy.ActionAccept,
	}}}
}

func namePods() []agent.NamePod {
	eg := nameEgress("*.example.com", "api.partner.io")
	return []agent.NamePod{
		{ID: podA, IPs: []netip.Addr{podIPs[podA]}, Egress: eg},
		{ID: podB, IPs: []netip.Addr{podIPs[podB]}, Egress: eg},
		{ID: podC, IPs: []netip.Addr{podIPs[podC]}},
	}
}

// zoneUpstream is the cluster DNS of these tests: a real miekg/dns server
// on loopback answering from a table of records per name; other names are
// NXDOMAIN.
func zoneUpstream(t testing.TB, records map[string][]string) string {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		rrs, ok := records[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for _, s := range rrs {
			rr, err := dns.NewRR(s)
			if err != nil {
				panic(err)
			}
			if rr.Header().Rrtype == q.Qtype || rr.Header().Rrtype == dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
			}
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

var testRecords = map[string][]string{
	"www.example.com.":    {"www.example.com. 300 IN A 198.51.100.1", "www.example.com. 300 IN AAAA 2001:db8::1"},
	"api.partner.io.":     {"api.partner.io. 120 IN A 198.51.100.2"},
	"denied.org.":         {"denied.org. 300 IN A 203.0.113.9"},
	"cdn.example.com.":    {"cdn.example.com. 600 IN CNAME edge.cdnprovider.net.", "edge.cdnprovider.net. 45 IN CNAME e7.cdnprovider.net.", "e7.cdnprovider.net. 200 IN A 198.51.100.7"},
	"short.example.com.":  {"short.example.com. 2 IN A 198.51.100.3"},
	"zero.example.com.":   {"zero.example.com. 0 IN A 198.51.100.4"},
	"kube.cluster.local.": {"kube.cluster.local. 5 IN A 10.96.0.1"},
	"many.example.com.":   manyA("many.example.com.", 8),
	"other.example.com.":  manyA("other.example.com.", 3),
}

// manyA is n A records 192.0.2.1..n for name.
func manyA(name string, n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("%s 60 IN A 192.0.2.%d", name, i))
	}
	return out
}

// clock is the injectable wall clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// learner is the in-memory dataplane with every Learn and Forget recorded,
// and Learn failing while fail is set (the fault the dataplane can have).
type learner struct {
	*dataplane.Memory
	mu      sync.Mutex
	fail    error
	gate    chan struct{} // when set, Learn waits for it
	learned []dataplane.LearnedAddr
	forgot  []string
	holds   map[dataplane.LearnedAddr]bool // what it was told and not told to forget, Expires zeroed
	expires map[dataplane.LearnedAddr]time.Time
}

func (l *learner) Learn(ctx context.Context, addrs []dataplane.LearnedAddr) error {
	l.mu.Lock()
	fail, gate := l.fail, l.gate
	l.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail != nil {
		return fail
	}
	if err := l.Memory.Learn(ctx, addrs); err != nil {
		return err
	}
	l.mu.Lock()
	l.learned = append(l.learned, addrs...)
	if l.holds == nil {
		l.holds, l.expires = map[dataplane.LearnedAddr]bool{}, map[dataplane.LearnedAddr]time.Time{}
	}
	for _, a := range addrs {
		k := a
		k.Expires = time.Time{}
		l.holds[k] = true
		if a.Expires.After(l.expires[k]) {
			l.expires[k] = a.Expires
		}
	}
	l.mu.Unlock()
	return nil
}

func (l *learner) Forget(ctx context.Context, endpoint string) error {
	if err := l.Memory.Forget(ctx, endpoint); err != nil {
		return err
	}
	l.mu.Lock()
	l.forgot = append(l.forgot, endpoint)
	for k := range l.holds {
		if k.Endpoint == endpoint {
			delete(l.holds, k)
			delete(l.expires, k)
		}
	}
	l.mu.Unlock()
	return nil
}

func (l *learner) setFail(err error) { l.mu.Lock(); l.fail = err; l.mu.Unlock() }

// held is what the dataplane was handed, as "endpoint addr name expiry".
func (l *learner) held() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, a := range l.learned {
		out = append(out, fmt.Sprintf("%s %s %s %s", a.Endpoint, a.Addr, a.Name, a.Expires.UTC().Format(time.TimeOnly)))
	}
	return out
}

// nameEnv is a real resolver with the name policy hook in front of a real
// upstream, over the in-memory dataplane.
type nameEnv struct {
	np    *agent.NamePolicy
	dp    *learner
	reg   *prometheus.Registry
	clk   *clock
	addr  string
	stop  func()
	recs  *records
	state string
}

type records struct {
	mu   sync.Mutex
	recs []fdns.Record
}

func (r *records) Record(rec fdns.Record) { r.mu.Lock(); r.recs = append(r.recs, rec); r.mu.Unlock() }
func (r *records) last() fdns.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recs[len(r.recs)-1]
}

type envOpt struct {
	cfg   agent.NamePolicyConfig
	dp    *learner
	clk   *clock
	state string
}

func startNameEnv(t *testing.T, o envOpt) *nameEnv {
	t.Helper()
	if o.dp == nil {
		o.dp = &learner{Memory: dataplane.NewMemory()}
	}
	if o.clk == nil {
		o.clk = &clock{t: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	}
	if o.state == "" {
		o.state = t.TempDir()
	}
	j, err := agent.OpenJournal(o.state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	reg := prometheus.NewRegistry()
	np, err := agent.NewNamePolicy(o.cfg, o.dp, j, reg, o.clk.now, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := np.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	np.Update(context.Background(), namePods())
	recs := &records{}
	srv, err := fdns.New(fdns.Config{Listen: "127.0.0.1:0", Upstream: zoneUpstream(t, testRecords)},
		fdns.Deps{Hooks: []fdns.Hook{np}, Pods: np, Recorder: recs, Registry: reg, Logger: discardLog(), Now: o.clk.now})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return &nameEnv{np: np, dp: o.dp, reg: reg, clk: o.clk, addr: srv.Addr().String(), stop: stop, recs: recs, state: o.state}
}

// ask sends one query from pod's address.
func (e *nameEnv) ask(t *testing.T, pod, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second,
		Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: podIPs[pod].AsSlice()}}}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := c.Exchange(m, e.addr)
	if err != nil {
		t.Fatalf("ask %s from %s: %v", name, pod, err)
	}
	return r
}

func TestNamePolicyRefusesNamesNoRuleAllowsAndLearnsOnlyAllowedOnes(t *testing.T) {
	e := startNameEnv(t, envOpt{})
	tests := []struct {
		name    string
		pod     string
		qname   string
		qtype   uint16
		rcode   int
		verdict string
		learned int
	}{
		{"a name under an allowed wildcard is answered and learned", podA, "www.example.com.", dns.TypeA, dns.RcodeSuccess, fdns.VerdictAllowed, 1},
		{"its AAAA is learned too", podA, "www.example.com.", dns.TypeAAAA, dns.RcodeSuccess, fdns.VerdictAllowed, 1},
		{"an exact name is answered and learned", podA, "API.Partner.IO.", dns.TypeA, dns.RcodeSuccess, fdns.VerdictAllowed, 1},
		{"a name no rule allows is refused", podA, "denied.org.", dns.TypeA, dns.RcodeRefused, fdns.VerdictRefused, 0},
		{"the wildcard's own apex is refused", podA, "example.com.", dns.TypeA, dns.RcodeRefused, fdns.VerdictRefused, 0},
		{"other types of a denied name are refused", podA, "denied.org.", dns.TypeTXT, dns.RcodeRefused, fdns.VerdictRefused, 0},
		{"an allowed name that does not exist is NXDOMAIN", podA, "nope.example.com.", dns.TypeA, dns.RcodeNameError, fdns.VerdictAllowed, 0},
		{"cluster names are never refused nor learned", podA, "kube.cluster.local.", dns.TypeA, dns.RcodeSuccess, fdns.VerdictUnpoliced, 0},
		{"search-path expansions into the cluster zone are never refused", podA, "denied.org.shop.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, fdns.VerdictUnpoliced, 0},
		{"clusterset.local is never refused", podA, "x.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError, fdns.VerdictUnpoliced, 0},
		{"a pod without name rules resolves anything and learns nothing", podC, "denied.org.", dns.TypeA, dns.RcodeSuccess, fdns.VerdictUnpoliced, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.ask(t, tt.pod, tt.qname, tt.qtype)
			if r.Rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
			}
			rec := e.recs.last()
			if rec.Pod != tt.pod || rec.Verdict != tt.verdict || rec.Learned != tt.learned {
				t.Errorf("record pod %q verdict %q learned %d, want %q %q %d", rec.Pod, rec.Verdict, rec.Learned, tt.pod, tt.verdict, tt.learned)
			}
		})
	}
	want := []string{
		podA + " 198.51.100.1 www.example.com 12:05:00",
		podA + " 2001:db8::1 www.example.com 12:05:00",
		podA + " 198.51.100.2 api.partner.io 12:02:00",
	}
	if got := e.dp.held(); !slices.Equal(got, want) {
		t.Errorf("the dataplane learned\n%q\nwant\n%q", got, want)
	}
	if got := testutil.ToFloat64(mustVec(t, e.reg, "fedmesh_dns_verdicts_total", "refused")); got != 3 {
		t.Errorf("fedmesh_dns_verdicts_total{verdict=refused} = %v, want 3", got)
	}
}

func TestNamePolicyWithRefusingOffResolvesDeniedNamesAndLearnsNothing(t *testing.T) {
	e := startNameEnv(t, envOpt{cfg: agent.NamePolicyConfig{ResolveDenied: true}})
	r := e.ask(t, podA, "denied.org.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("answer %v, want the upstream's", r)
	}
	if rec := e.recs.last(); rec.Verdict != fdns.VerdictDenied || rec.Learned != 0 {
		t.Errorf("record verdict %q learned %d, want denied 0", rec.Verdict, rec.Learned)
	}
	if got := e.dp.held(); len(got) != 0 {
		t.Errorf("the dataplane learned %q for a denied name", got)
	}
}

func TestNamePolicyLearnsTheCNAMEChainsEndForTheQueriedNameWithTheSmallestTTL(t *testing.T) {
	e := startNameEnv(t, envOpt{cfg: agent.NamePolicyConfig{MinTTL: -1}})
	r := e.ask(t, podA, "cdn.example.com.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 3 {
		t.Fatalf("answer %v, want the chain", r)
	}
	// TTLs on the chain: 600, 45, 200: 45 s.
	want := []string{podA + " 198.51.100.7 cdn.example.com 12:00:45"}
	if got := e.dp.held(); !slices.Equal(got, want) {
		t.Errorf("the dataplane learned %q, want %q", got, want)
	}
}

func TestNamePolicyMinTTLFloorsShortTTLs(t *testing.T) {
	tests := []struct {
		name   string
		minTTL time.Duration
		qname  string
		want   string
	}{
		{"a 2 s TTL is held for the 30 s default floor", 0, "short.example.com.", "198.51.100.3 short.example.com 12:00:30"},
		{"a TTL of 0 is held for the floor", 10 * time.Second, "zero.example.com.", "198.51.100.4 zero.example.com 12:00:10"},
		{"a TTL above the floor is kept", 10 * time.Second, "api.partner.io.", "198.51.100.2 api.partner.io 12:02:00"},
		{"no floor: the TTL as it is", -1, "short.example.com.", "198.51.100.3 short.example.com 12:00:02"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startNameEnv(t, envOpt{cfg: agent.NamePolicyConfig{MinTTL: tt.minTTL}})
			e.ask(t, podA, tt.qname, dns.TypeA)
			if got, want := e.dp.held(), []string{podA + " " + tt.want}; !slices.Equal(got, want) {
				t.Errorf("the dataplane learned %q, want %q", got, want)
			}
		})
	}
}

func TestNamePolicyLimitsKeepTheNewestAndCountWhatTheyDrop(t *testing.T) {
	tests := []struct {
		name      string
		cfg       agent.NamePolicyConfig
		queries   []string
		wantNames map[string]int // name -> addresses the pod holds at the end
		limited   map[string]float64
		answered  int // A records in the last answer
	}{
		{"an answer over the per-name limit keeps its first addresses and releases only those",
			agent.NamePolicyConfig{MaxAddrsPerName: 5},
			[]string{"many.example.com."},
			map[string]int{"many.example.com": 5}, map[string]float64{"name": 3}, 5},
		{"the per-pod limit drops the oldest name's addresses, a tenth below the limit",
			agent.NamePolicyConfig{MaxAddrsPerPod: 10},
			[]string{"other.example.com.", "many.example.com."},
			map[string]int{"many.example.com": 8, "other.example.com": 1}, map[string]float64{"pod": 2}, 8},
		{"the per-pod limit never drops the newest answer",
			agent.NamePolicyConfig{MaxAddrsPerPod: 8},
			[]string{"other.example.com.", "many.example.com."},
			map[string]int{"many.example.com": 8}, map[string]float64{"pod": 3}, 8},
		{"within the limits nothing is dropped",
			agent.NamePolicyConfig{},
			[]string{"other.example.com.", "many.example.com."},
			map[string]int{"many.example.com": 8, "other.example.com": 3}, map[string]float64{}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startNameEnv(t, envOpt{cfg: tt.cfg})
			var last *dns.Msg
			for _, q := range tt.queries {
				if last = e.ask(t, podA, q, dns.TypeA); last.Rcode != dns.RcodeSuccess {
					t.Fatalf("%s: rcode %s", q, dns.RcodeToString[last.Rcode])
				}
			}
			if len(last.Answer) != tt.answered {
				t.Errorf("the last answer carries %d records, want %d", len(last.Answer), tt.answered)
			}
			got := map[string]int{}
			for _, l := range heldNow(e.dp) {
				got[l.Name]++
			}
			if !mapsEqual(got, tt.wantNames) {
				t.Errorf("the pod holds %v, want %v", got, tt.wantNames)
			}
			for _, lim := range []string{"name", "pod"} {
				if got := testutil.ToFloat64(mustVec(t, e.reg, "fedmesh_dns_learn_limited_total", lim)); got != tt.limited[lim] {
					t.Errorf("fedmesh_dns_learn_limited_total{limit=%s} = %v, want %v", lim, got, tt.limited[lim])
				}
			}
		})
	}
}

func TestNamePolicyAnswersSERVFAILWhenTheDataplaneCannotLearn(t *testing.T) {
	e := startNameEnv(t, envOpt{})
	e.dp.setFail(errors.New("learned-address map full"))
	r := e.ask(t, podA, "www.example.com.", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Fatalf("answer %v, want SERVFAIL without addresses", r)
	}
	if rec := e.recs.last(); rec.Verdict != fdns.VerdictError || rec.Learned != 0 {
		t.Errorf("record verdict %q learned %d, want error 0", rec.Verdict, rec.Learned)
	}
	if got := testutil.ToFloat64(mustVec(t, e.reg, "fedmesh_dns_learn_errors_total", "learn")); got != 1 {
		t.Errorf("fedmesh_dns_learn_errors_total{op=learn} = %v, want 1", got)
	}
	e.dp.setFail(nil)
	if r := e.ask(t, podA, "www.example.com.", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("after the dataplane recovered: rcode %s", dns.RcodeToString[r.Rcode])
	}
}

func TestNamePolicyReleasesTheAnswerOnlyAfterTheDataplaneLearnedIt(t *testing.T) {
	e := startNameEnv(t, envOpt{})
	gate := make(chan struct{})
	e.dp.mu.Lock()
	e.dp.gate = gate
	e.dp.mu.Unlock()
	got := make(chan *dns.Msg, 1)
	go func() { got <- e.ask(t, podA, "www.example.com.", dns.TypeA) }()
	select {
	case r := <-got:
		t.Fatalf("answer %v released while the dataplane was still learning", r)
	case <-time.After(300 * time.Millisecond):
	}
	close(gate)
	if r := <-got; r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("answer %v, want the address once learned", r)
	}
	if n := len(heldNow(e.dp)); n != 1 {
		t.Errorf("the dataplane holds %d entries, want 1", n)
	}
}

func TestNamePolicyForgetsDeletedEndpoints(t *testing.T) {
	e := startNameEnv(t, envOpt{})
	e.ask(t, podA, "www.example.com.", dns.TypeA)
	e.ask(t, podB, "www.example.com.", dns.TypeA)
	pods := namePods()
	e.np.Update(context.Background(), slices.DeleteFunc(pods, func(p agent.NamePod) bool { return p.ID == podA }))
	e.dp.mu.Lock()
	forgot := slices.Clone(e.dp.forgot)
	e.dp.mu.Unlock()
	if got := forgot; !slices.Equal(got, []string{podA}) {
		t.Errorf("forgot %q, want [%s]", got, podA)
	}
	var left []string
	for _, l := range heldNow(e.dp) {
		left = append(left, l.Endpoint)
	}
	if !slices.Equal(left, []string{podB}) {
		t.Errorf("the dataplane holds entries of %q, want only %s", left, podB)
	}
	// A query from the deleted pod's address is no pod's now.
	if rec := (func() fdns.Record { e.ask(t, podA, "denied.org.", dns.TypeA); return e.recs.last() })(); rec.Pod != "" || rec.Verdict != fdns.VerdictUnpoliced {
		t.Errorf("record pod %q verdict %q, want no pod, unpoliced", rec.Pod, rec.Verdict)
	}
}

func TestNamePolicyRestartLearnsTheJournalAgainWithoutExtendingExpiry(t *testing.T) {
	state := t.TempDir()
	clk := &clock{t: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	cfg := agent.NamePolicyConfig{MinTTL: -1}
	first := startNameEnv(t, envOpt{cfg: cfg, clk: clk, state: state})
	first.ask(t, podA, "www.example.com.", dns.TypeA)     // 300 s: 12:05:00
	first.ask(t, podB, "short.example.com.", dns.TypeA)   // 2 s: 12:00:02
	first.ask(t, podA, "api.partner.io.", dns.TypeA)      // 120 s: 12:02:00
	first.np.Update(context.Background(), namePods()[1:]) // a deleted: forgotten
	first.ask(t, podB, "api.partner.io.", dns.TypeA)      // 12:02:00
	first.stop()

	clk.add(90 * time.Second) // down for 90 s: short.example.com expired
	restarted := &learner{Memory: dataplane.NewMemory()}
	second := startNameEnv(t, envOpt{cfg: cfg, clk: clk, state: state, dp: restarted})
	want := []string{podB + " 198.51.100.2 api.partner.io 12:02:00"}
	if got := restarted.held(); !slices.Equal(got, want) {
		t.Errorf("the restarted agent learned\n%q\nwant (same expiry, nothing expired or forgotten)\n%q", got, want)
	}
	// The journal was compacted to what is live.
	data, err := os.ReadFile(filepath.Join(state, agent.JournalFile))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "\n"); n != 1 {
		t.Errorf("compacted journal has %d lines, want 1:\n%s", n, data)
	}
	// A second restart still extends nothing.
	second.stop()
	clk.add(29 * time.Second)
	third := &learner{Memory: dataplane.NewMemory()}
	e3 := startNameEnv(t, envOpt{cfg: cfg, clk: clk, state: state, dp: third})
	if got := third.held(); !slices.Equal(got, want) {
		t.Errorf("the second restart learned %q, want %q", got, want)
	}
	// b was deleted while the agent was down: the first revision without
	// it forgets what the journal restored for it.
	e3.np.Update(context.Background(), namePods()[2:])
	if got := heldNow(third); len(got) != 0 {
		t.Errorf("after b's deletion the dataplane holds %v", got)
	}
}

func TestJournalSkipsATornLastLine(t *testing.T) {
	dir := t.TempDir()
	j, err := agent.OpenJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Date(2026, 12, 6, 13, 0, 0, 0, time.UTC)
	if err := j.Append([]dataplane.LearnedAddr{{Endpoint: podA, Addr: netip.MustParseAddr("192.0.2.1"), Name: "a.example.com", Expires: exp}}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	f, _ := os.OpenFile(filepath.Join(dir, agent.JournalFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"e":"c1/shop/a","a":"192.0.2.2","n":"b.exa`)
	f.Close()
	j, _ = agent.OpenJournal(dir)
	defer j.Close()
	got, err := j.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Addr != netip.MustParseAddr("192.0.2.1") || !got[0].Expires.Equal(exp) {
		t.Errorf("loaded %v, want the one whole entry", got)
	}
}

// heldNow lists what the dataplane was told to hold and not to forget.
func heldNow(l *learner) []dataplane.LearnedAddr {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []dataplane.LearnedAddr
	for k := range l.holds {
		k.Expires = l.expires[k]
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b dataplane.LearnedAddr) int {
		return strings.Compare(a.Endpoint+a.Name+a.Addr.String(), b.Endpoint+b.Name+b.Addr.String())
	})
	return out
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func mustVec(t *testing.T, reg *prometheus.Registry, name, label string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					v := m.GetCounter().GetValue()
					return metricValue(v)
				}
			}
		}
	}
	return metricValue(0)
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestAgentTellsNamePolicyItsLocalPodsAndForgetsDeletedOnes runs the real
// agent against real control-plane replicas: once a revision is applied,
// the resolver's hook knows the node's pods by address (and only those),
// and when a local endpoint is deleted, what it learned is forgotten, by
// the dataplane and by the cache that names flow records.
func TestAgentTellsNamePolicyItsLocalPodsAndForgetsDeletedOnes(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	dp := &learner{Memory: dataplane.NewMemory()}
	np, err := agent.NewNamePolicy(agent.NamePolicyConfig{}, dp, nil, nil, nil, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	flowNames := agent.NewNameCache(agent.NameCacheConfig{}, nil)
	startAgentWith(t, f.cp.Addrs(), nil, func(d *agent.Deps) { d.Names, d.FlowNames = np, flowNames })
	f.waitRegistered()
	select {
	case <-np.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("the agent never published its pods to the name policy")
	}
	if id, ok := np.PodByIP(netip.MustParseAddr("10.0.0.10")); !ok || id != "a/web/server" {
		t.Errorf("PodByIP(server) = %q %v, want a/web/server", id, ok)
	}
	if id, ok := np.PodByIP(netip.MustParseAddr("10.0.0.20")); ok {
		t.Errorf("PodByIP(client on another node) = %q, want no local pod", id)
	}
	// The server learned an answer (as the resolver's Release would do).
	q := &fdns.Query{Client: netip.MustParseAddrPort("10.0.0.10:40000"), Request: new(dns.Msg).SetQuestion("www.example.com.", dns.TypeA)}
	resp := new(dns.Msg).SetReply(q.Request)
	rr, _ := dns.NewRR("www.example.com. 60 IN A 198.51.100.1")
	resp.Answer = []dns.RR{rr}
	q.Pod, q.Verdict = "a/web/server", fdns.VerdictAllowed
	if _, err := np.Release(context.Background(), q, resp); err != nil {
		t.Fatal(err)
	}
	if n := len(heldNow(dp)); n != 1 {
		t.Fatalf("the dataplane holds %d entries, want 1", n)
	}
	flowNames.Learn("a/web/server", netip.MustParseAddr("198.51.100.1"), "www.example.com", time.Minute)
	rev := f.deleteEndpoint(server)
	if resp := f.waitEnforced(rev, 15*time.Second); !resp.GetEnforced() {
		t.Fatalf("WaitEnforced(%d) after the delete = %v", rev, resp)
	}
	eventually(t, "the deleted endpoint's learned addresses forgotten", func() bool { return len(heldNow(dp)) == 0 })
	eventually(t, "the deleted endpoint's flow names forgotten", func() bool { return flowNames.Len() == 0 })
	if _, ok := np.PodByIP(netip.MustParseAddr("10.0.0.10")); ok {
		t.Error("the deleted endpoint is still a pod of the name policy")
	}
}

// TestDomainNamesPolicyFromTheControlPlaneOpensOnlyWhatThePodResolved is
// the whole path on one node: a federated ClusterNetworkPolicy with a
// domainNames egress rule goes through real control-plane replicas to the
// real agent, which compiles it and hands the local pods to the name
// policy; the pod's queries through the real resolver (a real upstream on
// loopback) are refused or learned, and the in-memory twin then lets the
// pod reach what it was answered for an allowed name, and nothing else.
func TestDomainNamesPolicyFromTheControlPlaneOpensOnlyWhatThePodResolved(t *testing.T) {
	f := startFed(t, inproc.Options{})
	f.seed()
	var np *agent.NamePolicy
	clk := &clock{t: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	h := startAgentWith(t, f.cp.Addrs(), nil, func(d *agent.Deps) {
		rec := d.Dataplane.(*recorder)
		// The twin's wall and monotonic clocks both follow the test's.
		rec.Memory = dataplane.NewMemory(dataplane.WithWallClock(clk.now),
			dataplane.WithClock(func() uint64 { return uint64(clk.now().UnixNano()) }))
		var err error
		if np, err = agent.NewNamePolicy(agent.NamePolicyConfig{}, rec.Memory, nil, nil, clk.now, discardLog()); err != nil {
			t.Fatal(err)
		}
		d.Names = np
	})
	h.routes.set("10.0.0.10", "cali-server")
	f.waitRegistered()

	tcp443 := []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: 443}}}}
	spec, err := json.Marshal(cnpv1.ClusterNetworkPolicySpec{Tier: cnpv1.AdminTier, Priority: 10,
		Subject: cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{NamespaceSelector: metav1.LabelSelector{},
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}}},
		Egress: []cnpv1.ClusterNetworkPolicyEgressRule{
			{Name: "saas", Action: cnpv1.ClusterNetworkPolicyRuleActionAccept,
				To: []cnpv1.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnpv1.DomainName{"*.example.com"}}}, Protocols: tcp443},
			{Name: "rest", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
				To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"0.0.0.0/0"}}}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	// The replicas accept ClusterNetworkPolicy commands once each reported
	// a log format that applies them (FailedPrecondition until then).
	var rev uint64
	eventually(t, "the replicas accept the domainNames policy", func() bool {
		err := f.call("apply the domainNames policy", func(ctx context.Context, cc *grpc.ClientConn) error {
			r, err := fedmeshv1.NewClusterPolicyServiceClient(cc).ApplyClusterPolicies(ctx, &fedmeshv1.ApplyClusterPoliciesRequest{
				Policies: []*fedmeshv1.ClusterNetworkPolicy{{Name: "saas-only", SpecJson: spec}}})
			rev = r.GetRevision()
			return err
		})
		if status.Code(err) == codes.FailedPrecondition {
			return false
		}
		if err != nil {
			t.Fatalf("apply the domainNames policy: %v", err)
		}
		return true
	})
	if resp := f.waitEnforced(rev, 15*time.Second); !resp.GetEnforced() {
		t.Fatalf("WaitEnforced(%d) = %v", rev, resp)
	}
	eventually(t, "the server attached", attached(t, h, 1))

	srv, err := fdns.New(fdns.Config{Listen: "127.0.0.1:0", Upstream: zoneUpstream(t, testRecords)},
		fdns.Deps{Hooks: []fdns.Hook{np}, Pods: np, Logger: discardLog(), Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	ask := func(from, name string) *dns.Msg {
		t.Helper()
		req, _ := new(dns.Msg).SetQuestion(name, dns.TypeA).Pack()
		out := srv.Handle(context.Background(), req, netip.MustParseAddrPort(from+":40000"), fdns.UDP)
		m := new(dns.Msg)
		if err := m.Unpack(out); err != nil {
			t.Fatal(err)
		}
		return m
	}
	sport := uint16(40000)
	egress := func(dst string, port uint16) dataplane.Verdict {
		t.Helper()
		sport++ // a new connection each time
		v, _, _, err := h.dp.Process("a/web/server", policy.Egress, tcpSYN(netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr(dst), sport, port))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := egress("198.51.100.1", 443); v != dataplane.Deny {
		t.Fatalf("before resolving: server -> 198.51.100.1:443 = %v, want deny", v)
	}
	if r := ask("10.0.0.10", "denied.org."); r.Rcode != dns.RcodeRefused {
		t.Errorf("denied.org from the server: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	if r := ask("10.0.0.10", "www.example.com."); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("www.example.com from the server: %v", r)
	}
	if r := ask("10.0.0.20", "denied.org."); r.Rcode != dns.RcodeSuccess {
		t.Errorf("denied.org from a client that is no local pod: %s, want an answer", dns.RcodeToString[r.Rcode])
	}
	for _, c := range []struct {
		dst  string
		port uint16
		want dataplane.Verdict
	}{
		{"198.51.100.1", 443, dataplane.Allow}, // resolved for an allowed name
		{"198.51.100.1", 80, dataplane.Deny},   // not the rule's port
		{"203.0.113.9", 443, dataplane.Deny},   // a refused name's address
		{"198.51.100.2", 443, dataplane.Deny},  // never resolved
	} {
		if v := egress(c.dst, c.port); v != c.want {
			t.Errorf("server -> %s:%d = %v, want %v", c.dst, c.port, v, c.want)
		}
	}
	// The answer's TTL (300 s) passes: new connections are refused.
	clk.add(301 * time.Second)
	if v := egress("198.51.100.1", 443); v != dataplane.Deny {
		t.Errorf("after the TTL: a new connection server -> 198.51.100.1:443 = %v, want deny", v)
	}
}

func TestNamePolicyJournalsOnlyEntriesWhoseExpiryGrew(t *testing.T) {
	e := startNameEnv(t, envOpt{})
	lines := func() int {
		data, err := os.ReadFile(filepath.Join(e.state, agent.JournalFile))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(data), "\n")
	}
	e.ask(t, podA, "www.example.com.", dns.TypeA)
	e.ask(t, podA, "www.example.com.", dns.TypeA) // the same expiry: nothing new
	if n := lines(); n != 1 {
		t.Errorf("journal has %d lines after the same answer twice, want 1", n)
	}
	e.clk.add(time.Second)
	e.ask(t, podA, "www.example.com.", dns.TypeA) // a second later: a later expiry
	if n := lines(); n != 2 {
		t.Errorf("journal has %d lines after a later answer, want 2", n)
	}
	e.dp.mu.Lock()
	n := len(e.dp.learned)
	e.dp.mu.Unlock()
	if n != 3 {
		t.Errorf("the dataplane was handed %d entries, want every answer's (3)", n)
	}
}

// TestNamePolicyCompactsTheJournalAndSweepsExpiredEntries: a pod asking one
// name over and over grows the journal line by line; the sync goroutine's
// sweep drops what expired and compacts the journal to what is live.
func TestNamePolicyCompactsTheJournalAndSweepsExpiredEntries(t *testing.T) {
	state := t.TempDir()
	clk := &clock{t: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	j, err := agent.OpenJournal(state)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	reg := prometheus.NewRegistry()
	np, err := agent.NewNamePolicy(agent.NamePolicyConfig{MinTTL: -1}, &learner{Memory: dataplane.NewMemory()}, j, reg, clk.now, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	np.Update(context.Background(), namePods())
	answer := func(name, rr string) {
		t.Helper()
		q := &fdns.Query{Client: netip.AddrPortFrom(podIPs[podA], 40000), Request: new(dns.Msg).SetQuestion(name, dns.TypeA)}
		if _, err := np.Query(context.Background(), q); err != nil {
			t.Fatal(err)
		}
		resp := new(dns.Msg).SetReply(q.Request)
		r, _ := dns.NewRR(rr)
		resp.Answer = []dns.RR{r}
		if _, err := np.Release(context.Background(), q, resp); err != nil {
			t.Fatal(err)
		}
	}
	answer("api.partner.io.", "api.partner.io. 5 IN A 198.51.100.2") // expires 12:00:05
	for range 1100 {
		clk.add(10 * time.Millisecond)
		answer("www.example.com.", "www.example.com. 60 IN A 198.51.100.1")
	}
	if n := j.Lines(); n != 1101 {
		t.Fatalf("journal has %d lines, want one per answer (1101)", n)
	}
	np.Update(context.Background(), namePods()) // 11 s later: sweep and compact
	if n := j.Lines(); n != 1 {
		t.Errorf("journal has %d lines after compaction, want 1 (the one live entry)", n)
	}
	got, err := j.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "www.example.com" || !got[0].Expires.Equal(clk.now().Add(60*time.Second)) {
		t.Errorf("journal holds %v, want www.example.com until the last answer's expiry", got)
	}
	if g := testutil.ToFloat64(regGauge(t, reg, "fedmesh_dns_learned_addresses")); g != 1 {
		t.Errorf("fedmesh_dns_learned_addresses = %v, want 1", g)
	}
}

func regGauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return metricValue(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	t.Fatalf("no %s", name)
	return nil
}
