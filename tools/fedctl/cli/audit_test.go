package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{in: "90m", want: now.Add(-90 * time.Minute)},
		{in: "2026-12-06T10:00:00Z", want: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)},
		{in: "2026-12-06T10:00:00.5+01:00", want: time.Date(2026, 12, 6, 9, 0, 0, 5e8, time.UTC)},
		{in: "-1h", wantErr: "must be positive"},
		{in: "yesterday", wantErr: "want a duration (90m, 24h) or an RFC 3339 time"},
	} {
		got, err := parseSince(tc.in, now)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseSince(%q) = %v, %v; want error %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// fedctl shows who made a write: get/list -o yaml and watch events carry
// meta.updatedBy, and fedctl audit lists the writes, filtered, to admins
// only.
func TestAuditShowsWhoMadeEachWriteToAdminsOnly(t *testing.T) {
	p := startTLSPlane(t)
	admin, syncer := auth.Admin(), auth.Syncer("cluster-a")
	run := func(pr auth.Principal, args ...string) string {
		t.Helper()
		out, errOut, err := p.fedctl(t, pr, args...)
		if err != nil {
			t.Fatalf("fedctl %v as %s: %v\n%s", args, pr, err, errOut)
		}
		return out
	}
	run(admin, "cluster", "register", "cluster-a", "--pod-cidr", "10.1.0.0/16")
	run(admin, "policy", "apply", "-f", writeFile(t, "fed.yaml", `apiVersion: fedmesh.io/v1
kind: FederatedNetworkPolicy
metadata: {name: deny-all}
spec: {podSelector: {}}
`))
	run(syncer, "policy", "apply", "--cluster", "cluster-a", "-f", writeFile(t, "np.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x, namespace: default}
spec: {podSelector: {}}
`))

	for _, args := range [][]string{
		{"policy", "get", "federated/deny-all", "-o", "yaml"},
		{"policy", "list", "-o", "yaml"},
		{"cluster", "get", "cluster-a", "-o", "yaml"},
	} {
		if out := run(admin, args...); !strings.Contains(out, "updatedBy: spiffe://fedmesh/admin") || !strings.Contains(out, "updateTime: ") {
			t.Errorf("fedctl %v shows no meta.updatedBy of the admin:\n%s", args, out)
		}
	}
	if out := run(admin, "policy", "get", "cluster-a/default/x", "-o", "yaml"); !strings.Contains(out, "updatedBy: spiffe://fedmesh/cluster/cluster-a/syncer") {
		t.Errorf("the syncer's policy does not name the syncer:\n%s", out)
	}
	// A watch replays the events with their metadata.
	var out, errOut bytes.Buffer
	root := NewRoot(&out, &errOut)
	dir := filepath.Join(p.dir, "fedmesh_admin")
	root.SetArgs([]string{"--server", p.addr, "--ca", filepath.Join(p.dir, ca.CertFile), "--cert", filepath.Join(dir, "client.crt"), "--key", filepath.Join(dir, "client.key"),
		"watch", "--from", "1", "--kind", "policy", "-o", "yaml"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// The watch ends at the deadline (how it reports that is not this
	// test's concern); what it printed until then is.
	_ = root.ExecuteContext(ctx)
	if !strings.Contains(out.String(), "updatedBy: spiffe://fedmesh/cluster/cluster-a/syncer") || !strings.Contains(out.String(), "updatedBy: spiffe://fedmesh/admin") {
		t.Errorf("watch events lack meta.updatedBy:\n%s", out.String())
	}

	all := run(admin, "audit", "--since", "1h")
	for _, want := range []string{
		"spiffe://fedmesh/admin                  RegisterCluster  cluster-a  cluster-a",
		"spiffe://fedmesh/admin                  ApplyPolicies    -          deny-all",
		"spiffe://fedmesh/cluster/cluster-a/syncer  ApplyPolicies    cluster-a  default/x",
	} {
		if !strings.Contains(strings.Join(strings.Fields(all), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("fedctl audit lacks %q:\n%s", want, all)
		}
	}
	bySyncer := run(admin, "audit", "--principal", syncer.String())
	if strings.Contains(bySyncer, "spiffe://fedmesh/admin") || !strings.Contains(bySyncer, "default/x") {
		t.Errorf("--principal %s:\n%s", syncer, bySyncer)
	}
	if future := run(admin, "audit", "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)); strings.Count(future, "\n") != 1 {
		t.Errorf("--since an hour ahead lists writes:\n%s", future)
	}
	if js := run(admin, "audit", "--limit", "1", "-o", "json"); !strings.Contains(js, `"principal": "spiffe://fedmesh/cluster/cluster-a/syncer"`) || strings.Contains(js, "RegisterCluster") {
		t.Errorf("--limit 1 -o json is not the newest write:\n%s", js)
	}

	for _, pr := range []auth.Principal{syncer, auth.Node("cluster-a", "n1")} {
		_, errOut, err := p.fedctl(t, pr, "audit")
		if err == nil || strings.Count(errOut, "error: PermissionDenied:") != 1 {
			t.Errorf("%s reads the audit log: err %v, stderr %q", pr, err, errOut)
		}
	}
}
