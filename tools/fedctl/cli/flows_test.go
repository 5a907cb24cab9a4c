package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func storedFlow(t time.Time, dstCluster string, port uint32, deny bool) *fedmeshv1.Flow {
	f := &fedmeshv1.Flow{Time: timestamppb.New(t), Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW,
		Source:      &fedmeshv1.Workload{Cluster: "cluster-a", Namespace: "demo", Pod: "web", Ip: "10.1.1.11", Port: 40000},
		Destination: &fedmeshv1.Workload{Cluster: dstCluster, Namespace: "demo", Pod: "db", Ip: "10.2.1.12", Port: port},
		Decision: &fedmeshv1.FlowDecision{Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, Kind: fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE,
			Rule: &fedmeshv1.RuleRef{Policy: &fedmeshv1.PolicyKey{Cluster: dstCluster, Namespace: "demo", Name: "allow-web"}, Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS}}}
	if deny {
		f.Verdict = fedmeshv1.Verdict_VERDICT_DENY
		f.Decision = &fedmeshv1.FlowDecision{Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, Kind: fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS,
			SelectedBy: []*fedmeshv1.PolicyKey{{Cluster: dstCluster, Namespace: "demo", Name: "allow-web"}}}
	}
	return f
}

// fedctl flows reads the FlowService with filters and prints tables,
// JSON lines or YAML; its summary counts per edge; bad filters are
// refused naming the field or the flag; a cluster's principal sees only
// its cluster's flows.
func TestFlowsCommandsReadTheFlowService(t *testing.T) {
	p := startTLSPlane(t)
	now := time.Now()
	p.r.Flows().Add("cluster-b", "n1", []*fedmeshv1.Flow{
		storedFlow(now.Add(-2*time.Minute), "cluster-b", 5432, true),
		storedFlow(now.Add(-time.Minute), "cluster-b", 5432, false),
	}, 0)
	p.r.Flows().Add("cluster-c", "n1", []*fedmeshv1.Flow{storedFlow(now.Add(-time.Minute), "cluster-c", 53, false)}, 0)

	out, errOut, err := p.fedctl(t, auth.Admin(), "flows", "--verdict", "deny", "--since", "10m")
	if err != nil || !strings.Contains(out, "cluster-a/demo/web(10.1.1.11:40000) -> cluster-b/demo/db(10.2.1.12:5432) tcp") ||
		!strings.Contains(out, "ingress: selected by cluster-b/demo/allow-web and no rule allowed") || strings.Contains(out, ":53") {
		t.Fatalf("flows --verdict deny: %v\n%s%s", err, out, errOut)
	}
	out, errOut, err = p.fedctl(t, auth.Admin(), "flows", "--pod", "demo/db", "--cluster", "cluster-b", "-o", "json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 2 {
		t.Fatalf("flows -o json: %v, %d lines\n%s%s", err, len(lines), out, errOut)
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &obj); err != nil || obj["verdict"] != "VERDICT_ALLOW" {
		t.Fatalf("json line %q: %v", lines[1], err)
	}
	out, _, err = p.fedctl(t, auth.Admin(), "flows", "-o", "yaml", "--limit", "1")
	if err != nil || strings.Count(out, "---\n") != 1 || !strings.Contains(out, "verdict: VERDICT_ALLOW") {
		t.Fatalf("flows -o yaml: %v\n%s", err, out)
	}

	out, errOut, err = p.fedctl(t, auth.Admin(), "flows", "summary", "--since", "1h")
	if err != nil || !strings.Contains(out, "cluster-a/demo/web") || !strings.Contains(out, "cluster-b/demo/db:5432") {
		t.Fatalf("flows summary: %v\n%s%s", err, out, errOut)
	}
	var row []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, ":5432") {
			row = strings.Fields(l)
		}
	}
	if len(row) < 6 || row[3] != "1" || row[4] != "1" || row[5] != "cluster-b/demo/allow-web" {
		t.Fatalf("summary row %q, want 1 allowed, 1 denied by cluster-b/demo/allow-web", row)
	}

	out, _, err = p.fedctl(t, auth.Syncer("cluster-c"), "flows")
	if err != nil || strings.Contains(out, "5432") || !strings.Contains(out, ":53") {
		t.Fatalf("syncer of cluster-c sees other clusters' flows or not its own: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"flows", "--policy", "a/b/c/d"}, "filter.policy"},
		{[]string{"flows", "--cluster", "Bad_Name"}, "filter.cluster"},
		{[]string{"flows", "--since", "yesterday"}, "--since"},
		{[]string{"flows", "--verdict", "maybe"}, "--verdict"},
		{[]string{"flows", "summary", "--window", "1ms"}, "window"},
	} {
		_, errOut, err := p.fedctl(t, auth.Admin(), tc.args...)
		if err == nil || !strings.Contains(errOut+err.Error(), tc.want) {
			t.Errorf("%v: %v\n%s, want an error naming %s", tc.args, err, errOut, tc.want)
		}
	}
}

// fedctl flows summary names egress by the DNS name the pod resolved it
// from, one row over the name's addresses; --dns-name narrows flows and
// the summary to a name as a domainNames peer matches it.
func TestFlowsSummaryNamesEgressByDNSName(t *testing.T) {
	p := startTLSPlane(t)
	now := time.Now()
	egress := func(ip, name string, deny bool) *fedmeshv1.Flow {
		f := storedFlow(now.Add(-time.Minute), "cluster-b", 443, deny)
		f.Source, f.Destination = f.Destination, &fedmeshv1.Workload{Ip: ip, Port: 443}
		f.Source.Port = 40000
		f.DnsName = name
		return f
	}
	p.r.Flows().Add("cluster-b", "n1", []*fedmeshv1.Flow{
		egress("192.0.2.8", "api.stripe.com", false),
		egress("192.0.2.7", "api.stripe.com", false),
		egress("192.0.2.7", "api.stripe.com", true),
		egress("198.51.100.1", "", false),
		storedFlow(now.Add(-time.Minute), "cluster-b", 5432, false),
	}, 0)
	out, errOut, err := p.fedctl(t, auth.Admin(), "flows", "summary", "--since", "1h")
	rows := map[string][]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			rows[f[1]] = f
		}
	}
	if r := rows["api.stripe.com(192.0.2.7,192.0.2.8):443"]; err != nil || len(r) < 5 || r[0] != "cluster-b/demo/db" || r[3] != "2" || r[4] != "1" {
		t.Fatalf("flows summary: %v, want one row cluster-b/demo/db -> api.stripe.com over both addresses, 2 allowed 1 denied\n%s%s", err, out, errOut)
	}
	if _, ok := rows["198.51.100.1:443"]; !ok {
		t.Fatalf("flows summary lacks the unnamed address as its own row:\n%s", out)
	}
	out, _, err = p.fedctl(t, auth.Admin(), "flows", "summary", "--since", "1h", "-o", "json")
	if err != nil || !regexp.MustCompile(`"dnsName":\s*"api.stripe.com"`).MatchString(out) || !regexp.MustCompile(`"dnsAddresses":\s*\[\s*"192.0.2.7",\s*"192.0.2.8"\s*\]`).MatchString(out) {
		t.Fatalf("flows summary -o json: %v, want the edge's dnsName and dnsAddresses\n%s", err, out)
	}
	out, _, err = p.fedctl(t, auth.Admin(), "flows", "summary", "--since", "1h", "--dns-name", "*.stripe.com")
	if err != nil || !strings.Contains(out, "api.stripe.com(") || strings.Contains(out, "198.51.100.1") || strings.Contains(out, ":5432") {
		t.Fatalf("flows summary --dns-name *.stripe.com: %v, want only the named edge\n%s", err, out)
	}
	out, _, err = p.fedctl(t, auth.Admin(), "flows", "--dns-name", "API.stripe.com.")
	if err != nil || strings.Count(out, "api.stripe.com(") != 3 || strings.Contains(out, "5432") {
		t.Fatalf("flows --dns-name: %v, want the three flows to api.stripe.com\n%s", err, out)
	}
	if _, errOut, err := p.fedctl(t, auth.Admin(), "flows", "--dns-name", "api..stripe.com"); err == nil || !strings.Contains(errOut+err.Error(), "filter.dnsName") {
		t.Fatalf("a bad --dns-name: %v %s, want an error naming filter.dnsName", err, errOut)
	}
}

func TestEdgeDestinationShowsANamesAddresses(t *testing.T) {
	for _, tc := range []struct {
		e    *fedmeshv1.FlowEdge
		want string
	}{
		{&fedmeshv1.FlowEdge{Destination: &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "db", Ip: "10.0.0.1", Port: 5432}}, "a/demo/db:5432"},
		{&fedmeshv1.FlowEdge{Destination: &fedmeshv1.Workload{Ip: "192.0.2.7", Port: 443}}, "192.0.2.7:443"},
		{&fedmeshv1.FlowEdge{Destination: &fedmeshv1.Workload{}}, "world"},
		{&fedmeshv1.FlowEdge{Destination: &fedmeshv1.Workload{Ip: "2001:db8::1", Port: 443}, DnsName: "api.example.com", DnsAddresses: []string{"2001:db8::1"}}, "api.example.com(2001:db8::1):443"},
		{&fedmeshv1.FlowEdge{Destination: &fedmeshv1.Workload{Ip: "192.0.2.1", Port: 443}, DnsName: "cdn.example.com",
			DnsAddresses: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"}}, "cdn.example.com(192.0.2.1,192.0.2.2,192.0.2.3,+2):443"},
	} {
		addrs := slices.Clone(tc.e.GetDnsAddresses())
		if got := edgeDestination(tc.e); got != tc.want {
			t.Errorf("edgeDestination(%v) = %q, want %q", tc.e, got, tc.want)
		}
		if !slices.Equal(addrs, tc.e.GetDnsAddresses()) {
			t.Errorf("edgeDestination changed the edge's addresses to %v", tc.e.GetDnsAddresses())
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fedctl flows --follow prints stored flows, then new ones as they arrive,
// until interrupted.
func TestFlowsFollowPrintsNewFlowsAsTheyArrive(t *testing.T) {
	p := startTLSPlane(t)
	now := time.Now()
	p.r.Flows().Add("cluster-b", "n1", []*fedmeshv1.Flow{storedFlow(now, "cluster-b", 1111, true)}, 0)
	// Credentials as the fedctl helper makes them.
	if _, errOut, err := p.fedctl(t, auth.Admin(), "flows"); err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	dir := filepath.Join(p.dir, "fedmesh_admin")
	var out, errOut syncBuffer
	root := NewRoot(&out, &errOut)
	root.SetArgs([]string{"--server", p.addr, "--ca", filepath.Join(p.dir, ca.CertFile), "--cert", filepath.Join(dir, "client.crt"), "--key", filepath.Join(dir, "client.key"),
		"flows", "--follow", "--verdict", "deny", "-o", "json"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	// protojson spaces its output at random: match loosely.
	waitFor := func(what string) {
		t.Helper()
		re := regexp.MustCompile(strings.ReplaceAll(regexp.QuoteMeta(what), ":", `:\s*`))
		deadline := time.Now().Add(10 * time.Second)
		for !re.MatchString(out.String()) {
			if time.Now().After(deadline) {
				cancel()
				t.Fatalf("no %s in the followed output:\n%s%s", what, out.String(), errOut.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(`"port":1111`)
	p.r.Flows().Add("cluster-b", "n1", []*fedmeshv1.Flow{storedFlow(now, "cluster-b", 2222, false), storedFlow(now, "cluster-b", 3333, true)}, 0)
	waitFor(`"port":3333`)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow ended with %v\n%s", err, errOut.String())
	}
	if strings.Contains(out.String(), "2222") {
		t.Fatalf("followed an allowed flow with --verdict deny:\n%s", out.String())
	}
}
