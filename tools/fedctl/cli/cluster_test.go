package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// A node whose translation truncates a service says so in `fedctl cluster
// status`: a count in its row and the agent's line naming the service under
// the table; a node without problems shows none, and -o yaml carries the
// field as reported.
func TestClusterStatusNamesTheServicesANodeTruncates(t *testing.T) {
	p := startTLSPlane(t)
	admin := auth.Admin()
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := p.fedctl(t, admin, args...)
		if err != nil {
			t.Fatalf("fedctl %v: %v\n%s%s", args, err, out, errOut)
		}
		return out
	}
	run("cluster", "register", "a", "--pod-cidr", "10.1.0.0/16")
	nodes := fedmeshv1.NewNodeServiceClient(planeConn(t, p, admin))
	for i, name := range []string{"n1", "n2"} {
		if _, err := nodes.RegisterNode(context.Background(), &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
			Cluster: "a", Name: name, UnderlayIp: fmt.Sprintf("198.18.0.%d", i+1), PodCidrs: []string{fmt.Sprintf("10.1.%d.0/24", i+1)}}}); err != nil {
			t.Fatal(err)
		}
	}
	problem := "service demo/redis 100.127.9.147:6379/TCP truncated: 4096 of 5000 backends loaded (per-frontend backend limit)"
	for name, problems := range map[string][]string{"n1": {problem}, "n2": nil} {
		if _, err := fedmeshv1.NewNodeServiceClient(planeConn(t, p, auth.Node("a", name))).ReportNodeStatus(context.Background(), &fedmeshv1.ReportNodeStatusRequest{
			Cluster: "a", Name: name, Status: &fedmeshv1.NodeStatus{Ready: true, ServiceProblems: problems}}); err != nil {
			t.Fatal(err)
		}
	}

	out := run("cluster", "status", "a")
	rows := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "a" {
			rows[f[1]] = l
		}
	}
	if !strings.Contains(out, "SERVICES") || !strings.Contains(rows["n1"], "1 truncated") {
		t.Errorf("n1's row does not count its truncated service:\n%s", out)
	}
	if strings.Contains(rows["n2"], "truncated") {
		t.Errorf("n2 reported no problem but its row shows one:\n%s", out)
	}
	if !strings.Contains(out, "a/n1: "+problem) {
		t.Errorf("the problem line is not under the table:\n%s", out)
	}
	if y := run("cluster", "status", "a", "-o", "yaml"); !strings.Contains(y, "serviceProblems:") || !strings.Contains(y, "demo/redis") {
		t.Errorf("yaml lacks the node's serviceProblems:\n%s", y)
	}
}
