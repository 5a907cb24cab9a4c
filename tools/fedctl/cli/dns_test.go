package cli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func storedQuery(t time.Time, pod, name, rcode string, v fedmeshv1.DNSPolicyVerdict) *fedmeshv1.DNSRecord {
	r := &fedmeshv1.DNSRecord{Time: timestamppb.New(t), Namespace: "demo", Pod: pod, ClientIp: "10.1.1.11", ClientPort: 40000,
		Name: name, Type: "A", Rcode: rcode, Latency: durationpb.New(1500 * time.Microsecond), Source: "upstream", Upstream: "10.96.0.10:53", Transport: "udp", Verdict: v}
	if rcode == "NOERROR" {
		r.Ttl = 60
		r.Learned = 1
		r.Answers = []*fedmeshv1.DNSAnswer{
			{Name: name, Type: "CNAME", Ttl: 300, Target: "edge.cdn.test."},
			{Name: "edge.cdn.test.", Type: "A", Ttl: 60, Addr: "192.0.2.80"},
		}
	}
	return r
}

// fedctl dns reads GetDNS with filters and prints a table, JSON lines or
// YAML; bad filters are refused naming the field or the flag; a cluster's
// principal sees only its cluster's queries; a flow to a resolved address
// shows the name in fedctl flows.
func TestDNSCommandReadsTheQueriesTheAgentsShipped(t *testing.T) {
	p := startTLSPlane(t)
	now := time.Now()
	p.r.DNS().Add("cluster-a", "n1", []*fedmeshv1.DNSRecord{
		storedQuery(now.Add(-2*time.Minute), "web", "api.example.com.", "NOERROR", fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ALLOWED),
		storedQuery(now.Add(-time.Minute), "web", "evil.test.", "REFUSED", fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_REFUSED),
	}, 0)
	p.r.DNS().Add("cluster-c", "n1", []*fedmeshv1.DNSRecord{storedQuery(now.Add(-time.Minute), "db", "db.example.org.", "NXDOMAIN", 0)}, 0)

	out, errOut, err := p.fedctl(t, auth.Admin(), "dns", "--pod", "demo/web", "--since", "10m")
	if err != nil {
		t.Fatalf("dns --pod: %v\n%s", err, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TIME") {
		t.Fatalf("dns --pod demo/web: want a header and two queries:\n%s", out)
	}
	for _, want := range []string{"cluster-a/n1", "demo/web", "api.example.com.", "NOERROR", "1.5ms", "allowed", "edge.cdn.test.(300s) 192.0.2.80(60s) [1 learned]"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("first row %q lacks %q", lines[1], want)
		}
	}
	if f := strings.Fields(lines[2]); !strings.Contains(lines[2], "evil.test.") || !strings.Contains(lines[2], "REFUSED") || f[len(f)-1] != "refused" {
		t.Errorf("second row %q, want the refused query with its verdict", lines[2])
	}

	out, errOut, err = p.fedctl(t, auth.Admin(), "dns", "--name", "*.EXAMPLE.com", "-o", "json")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 1 {
		t.Fatalf("dns --name '*.EXAMPLE.com' -o json: %v, want one line (not example.org)\n%s%s", err, out, errOut)
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &obj); err != nil || obj["name"] != "api.example.com." || obj["verdict"] != "DNS_POLICY_VERDICT_ALLOWED" {
		t.Fatalf("json line %q: %v", lines[0], err)
	}
	out, _, err = p.fedctl(t, auth.Admin(), "dns", "--verdict", "refused", "-o", "yaml")
	if err != nil || strings.Count(out, "---\n") != 1 || !strings.Contains(out, "name: evil.test.") || !strings.Contains(out, "rcode: REFUSED") {
		t.Fatalf("dns --verdict refused -o yaml: %v\n%s", err, out)
	}
	out, _, err = p.fedctl(t, auth.Admin(), "dns", "--cluster", "cluster-c", "--rcode", "nxdomain")
	if err != nil || !strings.Contains(out, "db.example.org.") || strings.Contains(out, "example.com") {
		t.Fatalf("dns --cluster cluster-c --rcode nxdomain: %v\n%s", err, out)
	}

	out, _, err = p.fedctl(t, auth.Syncer("cluster-c"), "dns")
	if err != nil || strings.Contains(out, "example.com") || !strings.Contains(out, "db.example.org.") {
		t.Fatalf("syncer of cluster-c sees other clusters' queries or not its own: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dns", "--name", "a.*.com"}, "filter.name"},
		{[]string{"dns", "--pod", "Bad/web"}, "filter.pod"},
		{[]string{"dns", "--rcode", "MAYBE"}, "filter.rcode"},
		{[]string{"dns", "--since", "yesterday"}, "--since"},
		{[]string{"dns", "--verdict", "maybe"}, "--verdict"},
	} {
		_, errOut, err := p.fedctl(t, auth.Admin(), tc.args...)
		if err == nil || !strings.Contains(errOut+err.Error(), tc.want) {
			t.Errorf("%v: %v\n%s, want an error naming %s", tc.args, err, errOut, tc.want)
		}
	}

	// A flow record with a DNS name shows it beside the address.
	f := storedFlow(now, "", 443, false)
	f.Destination = &fedmeshv1.Workload{Ip: "192.0.2.80", Port: 443}
	f.DnsName = "api.example.com"
	p.r.Flows().Add("cluster-a", "n1", []*fedmeshv1.Flow{f}, 0)
	out, errOut, err = p.fedctl(t, auth.Admin(), "flows", "--since", "10m")
	if err != nil || !strings.Contains(out, "-> api.example.com(192.0.2.80:443) tcp") {
		t.Fatalf("flows with a DNS name: %v\n%s%s", err, out, errOut)
	}
}

// fedctl dns --follow prints stored queries, then new ones as they
// arrive, until interrupted.
func TestDNSFollowPrintsNewQueriesAsTheyArrive(t *testing.T) {
	p := startTLSPlane(t)
	now := time.Now()
	p.r.DNS().Add("cluster-a", "n1", []*fedmeshv1.DNSRecord{storedQuery(now, "web", "old.example.com.", "NOERROR", 0)}, 0)
	if _, errOut, err := p.fedctl(t, auth.Admin(), "dns"); err != nil { // credentials as the helper makes them
		t.Fatalf("%v\n%s", err, errOut)
	}
	dir := filepath.Join(p.dir, "fedmesh_admin")
	var out, errOut syncBuffer
	root := NewRoot(&out, &errOut)
	root.SetArgs([]string{"--server", p.addr, "--ca", filepath.Join(p.dir, ca.CertFile), "--cert", filepath.Join(dir, "client.crt"), "--key", filepath.Join(dir, "client.key"),
		"dns", "--follow", "--pod", "web"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	waitFor := func(what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out.String(), what) {
			if time.Now().After(deadline) {
				cancel()
				t.Fatalf("no %s in the followed output:\n%s%s", what, out.String(), errOut.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("old.example.com.")
	p.r.DNS().Add("cluster-a", "n1", []*fedmeshv1.DNSRecord{
		storedQuery(time.Now(), "db", "other-pod.example.com.", "NOERROR", 0),
		storedQuery(time.Now(), "web", "new.example.com.", "NOERROR", 0),
	}, 0)
	waitFor("new.example.com.")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow ended with %v\n%s", err, errOut.String())
	}
	if strings.Contains(out.String(), "other-pod") {
		t.Fatalf("followed another pod's query:\n%s", out.String())
	}
}
