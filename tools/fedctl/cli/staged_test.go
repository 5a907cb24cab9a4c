package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

const stagedLockdown = `apiVersion: fedmesh.io/v1
kind: FederatedNetworkPolicy
metadata: {name: db-lockdown, namespace: demo}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
`

const stagedNoTelnet = `apiVersion: fedmesh.io/v1
kind: FederatedClusterNetworkPolicy
metadata: {name: no-telnet}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {}}
  ingress:
  - name: telnet
    action: Deny
    from: [{namespaces: {}}]
    protocols: [{tcp: {destinationPort: {number: 23}}}]
`

// fedctl stages policies (both kinds), lists them as staged beside the
// enforced ones, shows flows they would deny, previews them, promotes one,
// and deletes the other; a cluster's principal cannot stage.
func TestPolicyStagePreviewPromoteDelete(t *testing.T) {
	p := startTLSPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := p.fedctl(t, auth.Admin(), args...)
		if err != nil {
			t.Fatalf("fedctl %v: %v\n%s%s", args, err, out, errOut)
		}
		return out + errOut
	}
	run("cluster", "register", "cluster-a", "--pod-cidr", "10.1.0.0/16")
	eps := []*fedmeshv1.Endpoint{
		{Cluster: "cluster-a", Namespace: "demo", Name: "web", Node: "n1", Ips: []string{"10.1.0.10"}, Labels: map[string]string{"app": "web"}},
		{Cluster: "cluster-a", Namespace: "demo", Name: "db", Node: "n1", Ips: []string{"10.1.0.13"}, Labels: map[string]string{"app": "db"}},
	}
	if _, err := fedmeshv1.NewEndpointServiceClient(planeConn(t, p, auth.Syncer("cluster-a"))).UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "cluster-a", Endpoints: eps}); err != nil {
		t.Fatal(err)
	}
	flow := func(port uint32) *fedmeshv1.Flow {
		return &fedmeshv1.Flow{Time: timestamppb.Now(), Cluster: "cluster-a", Node: "n1", Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW,
			Source:      &fedmeshv1.Workload{Cluster: "cluster-a", Namespace: "demo", Pod: "web", Ip: "10.1.0.10", Port: 40000},
			Destination: &fedmeshv1.Workload{Cluster: "cluster-a", Namespace: "demo", Pod: "db", Ip: "10.1.0.13", Port: port}}
	}
	p.r.Flows().Add("cluster-a", "n1", []*fedmeshv1.Flow{flow(5432), flow(23)}, 0)

	np, cnp := writeFile(t, "np.yaml", stagedLockdown), writeFile(t, "cnp.yaml", stagedNoTelnet)
	if _, errOut, err := p.fedctl(t, auth.Syncer("cluster-a"), "policy", "apply", "--staged", "-f", np); err == nil || !strings.Contains(errOut, "PermissionDenied") {
		t.Fatalf("a syncer stages a federated policy: %v\n%s", err, errOut)
	}
	if out := run("policy", "apply", "--staged", "-f", np); !strings.Contains(out, "policy federated/demo/db-lockdown staged at revision") {
		t.Fatalf("stage: %s", out)
	}
	run("policy", "apply", "--staged", "-f", cnp)

	list := run("policy", "list")
	rows := map[string][]string{}
	for _, l := range strings.Split(list, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			rows[f[0]] = f
		}
	}
	if r := rows["federated/demo/db-lockdown"]; len(r) < 2 || r[1] != "staged" {
		t.Fatalf("list: want federated/demo/db-lockdown of KIND staged\n%s", list)
	}
	if r := rows["cnp/federated/no-telnet"]; len(r) < 4 || r[1] != "staged" || r[2] != "Admin" || r[3] != "3" {
		t.Fatalf("list: want cnp/federated/no-telnet staged, Admin, 3\n%s", list)
	}
	if out := run("policy", "list", "--staged", "-o", "yaml"); !strings.Contains(out, "networkPolicy:") || !strings.Contains(out, "clusterNetworkPolicy:") {
		t.Fatalf("list --staged -o yaml:\n%s", out)
	}
	if out := run("policy", "list", "--federated"); strings.Count(out, "federated/demo/db-lockdown") != 1 {
		t.Fatalf("the staged policy shows as enforced too:\n%s", out)
	}
	if out := run("policy", "get", "--staged", "federated/demo/db-lockdown"); !strings.Contains(out, "name: db-lockdown") {
		t.Fatalf("get --staged: %s", out)
	}
	if _, errOut, err := p.fedctl(t, auth.Admin(), "policy", "get", "federated/demo/db-lockdown"); err == nil || !strings.Contains(errOut, "NotFound") {
		t.Fatalf("the staged policy is found among the enforced ones: %v %s", err, errOut)
	}
	// reach answers with the enforced policies; --staged as if the staged
	// ones were enforced, naming the one that would deny.
	if out := run("reach", "cluster-a/demo/web", "cluster-a/demo/db", "--port", "5432"); !strings.Contains(out, "ALLOWED") {
		t.Fatalf("reach with the lockdown only staged: %s", out)
	}
	if out, errOut, err := p.fedctl(t, auth.Admin(), "reach", "cluster-a/demo/web", "cluster-a/demo/db", "--port", "5432", "--staged"); err == nil ||
		!strings.Contains(out, "DENIED") || !strings.Contains(out, "would be denied by staged federated/demo/db-lockdown") {
		t.Fatalf("reach --staged: %v\n%s%s\nwant DENIED, would be denied by staged federated/demo/db-lockdown", err, out, errOut)
	}

	out := run("flows")
	seen := 0
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.Contains(l, ":5432)"):
			seen++
			if !strings.Contains(l, "would be denied by staged federated/demo/db-lockdown") {
				t.Errorf("flow to 5432: %q", l)
			}
		case strings.Contains(l, ":23)"):
			seen++
			if !strings.Contains(l, "would be denied by staged cnp/federated/no-telnet") {
				t.Errorf("flow to 23: %q", l)
			}
		}
	}
	if seen != 2 {
		t.Fatalf("flows: want both flows\n%s", out)
	}
	// The summary counts per edge what the staged policies would deny.
	sum := run("flows", "summary", "--since", "1h")
	var row []string
	for _, l := range strings.Split(sum, "\n") {
		if strings.Contains(l, "cluster-a/demo/db:5432") {
			row = strings.Fields(l)
		}
	}
	// SOURCE DESTINATION PROTO ALLOWED DENIED (DENIED BY empty) STAGED DENY STAGED BY
	if !strings.Contains(sum, "STAGED DENY") || len(row) != 7 || row[5] != "1" || row[6] != "federated/demo/db-lockdown" {
		t.Fatalf("flows summary row %q, want 1 flow denied by staged federated/demo/db-lockdown\n%s", row, sum)
	}
	for _, l := range strings.Split(strings.TrimSpace(run("flows", "-o", "json")), "\n") {
		var f struct {
			Staged struct {
				Verdict  string
				DeniedBy []struct{ Kind, Name string }
			}
		}
		if err := json.Unmarshal([]byte(l), &f); err != nil || f.Staged.Verdict != "VERDICT_DENY" || len(f.Staged.DeniedBy) != 1 {
			t.Fatalf("flows -o json line %s (%v): want a staged DENY naming one staged policy", l, err)
		}
	}

	out = run("policy", "preview", "cnp/federated/no-telnet", "--since", "1h")
	if !strings.Contains(out, "would deny") || !strings.Contains(out, "cluster-a/demo/db:23") || strings.Contains(out, ":5432") ||
		!strings.Contains(out, "2 flows evaluated") {
		t.Fatalf("preview no-telnet:\n%s", out)
	}
	if y := run("policy", "preview", "federated/demo/db-lockdown", "--since", "1h", "-o", "yaml"); !strings.Contains(y, "wouldDeny:") || strings.Count(y, "flows: \"1\"") != 2 {
		t.Fatalf("preview -o yaml:\n%s", y)
	}
	if _, errOut, err := p.fedctl(t, auth.Admin(), "policy", "preview", "federated/demo/db-lockdown"); err == nil || !strings.Contains(errOut+err.Error(), "--since") {
		t.Fatalf("preview without --since: %v %s", err, errOut)
	}

	// An enforced policy of the name: promote refuses without --replace.
	run("policy", "apply", "-f", np)
	if _, errOut, err := p.fedctl(t, auth.Admin(), "policy", "promote", "federated/demo/db-lockdown"); err == nil || !strings.Contains(errOut, "AlreadyExists") || !strings.Contains(errOut, "--replace") {
		t.Fatalf("promote over an enforced policy: %v\n%s", err, errOut)
	}
	if out := run("policy", "promote", "federated/demo/db-lockdown", "--replace", "--wait"); !strings.Contains(out, "promoted at revision") || !strings.Contains(out, "replacing") {
		t.Fatalf("promote --replace: %s", out)
	}
	if out := run("policy", "list", "--staged"); strings.Contains(out, "db-lockdown") {
		t.Fatalf("promoted policy still staged:\n%s", out)
	}
	if out := run("policy", "delete", "--staged", "cnp/federated/no-telnet"); !strings.Contains(out, "staged policy cnp/federated/no-telnet deleted") {
		t.Fatalf("delete --staged: %s", out)
	}
	if out := run("policy", "list"); strings.Contains(out, "staged") || !strings.Contains(out, "federated/demo/db-lockdown") {
		t.Fatalf("after promote and delete:\n%s", out)
	}
	if _, errOut, err := p.fedctl(t, auth.Admin(), "policy", "promote", "cluster-a/demo/x"); err == nil || !strings.Contains(errOut+err.Error(), "federated") {
		t.Fatalf("promote of a cluster's policy key: %v %s", err, errOut)
	}
}

// policy apply --staged -f of a file of several policies is one write: a
// bad one stages nothing and the error names it; good ones are staged at
// one revision.
func TestPolicyApplyStagedFileIsAllOrNothing(t *testing.T) {
	p := startTLSPlane(t)
	badOpen := `apiVersion: fedmesh.io/v1
kind: FederatedNetworkPolicy
metadata: {name: db-open, namespace: demo}
spec:
  podSelector: {matchLabels: {app: "-not a label value-"}}
  policyTypes: [Ingress]
`
	goodOpen := strings.Replace(badOpen, `"-not a label value-"`, "db", 1)
	mixed := writeFile(t, "mixed.yaml", stagedLockdown+"---\n"+badOpen)
	out, errOut, err := p.fedctl(t, auth.Admin(), "policy", "apply", "--staged", "-f", mixed)
	if err == nil || !strings.Contains(errOut, "InvalidArgument") || !strings.Contains(errOut, "policies[1].networkPolicy.spec.podSelector") || !strings.Contains(errOut, "[1] federated/demo/db-open") {
		t.Fatalf("stage a file with a bad second policy: %v\n%s%s\nwant InvalidArgument naming policies[1] (federated/demo/db-open)", err, out, errOut)
	}
	list, _, err := p.fedctl(t, auth.Admin(), "policy", "list", "--staged")
	if err != nil || strings.Contains(list, "db-lockdown") {
		t.Fatalf("after the refused file the staged list is %q (%v); want nothing staged, not even the good first policy", list, err)
	}

	both := writeFile(t, "both.yaml", stagedLockdown+"---\n"+goodOpen)
	out, errOut, err = p.fedctl(t, auth.Admin(), "policy", "apply", "--staged", "-f", both)
	if err != nil {
		t.Fatalf("stage two good policies: %v\n%s%s", err, out, errOut)
	}
	revs := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		// policy NAME staged at revision N (...)
		if f := strings.Fields(l); len(f) > 5 && f[2] == "staged" {
			revs[f[1]] = f[5]
		}
	}
	if len(revs) != 2 || revs["federated/demo/db-lockdown"] == "" || revs["federated/demo/db-lockdown"] != revs["federated/demo/db-open"] {
		t.Fatalf("stage two good policies printed %q, want both staged at one revision", out)
	}
}
