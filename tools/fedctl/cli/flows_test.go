package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
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
