package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// TestPolicyRecommendFromObservedFlows: flows of namespace demo in the
// replica's flow store become policies that fedctl policy apply takes, and
// --check replays them with the compiler: observed allowed, unobserved
// denied.
func TestPolicyRecommendFromObservedFlows(t *testing.T) {
	p := startTLSPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, c := range []string{"cluster-a", "cluster-b"} {
		cidr := map[string]string{"cluster-a": "10.1.0.0/16", "cluster-b": "10.2.0.0/16"}[c]
		if _, errOut, err := p.fedctl(t, auth.Admin(), "cluster", "register", c, "--pod-cidr", cidr); err != nil {
			t.Fatalf("register %s: %v %s", c, err, errOut)
		}
	}
	pods := map[string][]*fedmeshv1.Endpoint{
		"cluster-a": {
			{Name: "web-1", Ips: []string{"10.1.0.10"}, Labels: map[string]string{"app": "web", "pod-template-hash": "x1"}},
			{Name: "web-2", Ips: []string{"10.1.0.11"}, Labels: map[string]string{"app": "web", "pod-template-hash": "x2"}},
			{Name: "api-1", Ips: []string{"10.1.0.12"}, Labels: map[string]string{"app": "api"}},
			{Name: "db-1", Ips: []string{"10.1.0.13"}, Labels: map[string]string{"app": "db"}},
		},
		"cluster-b": {{Name: "api-b", Ips: []string{"10.2.0.12"}, Labels: map[string]string{"app": "api"}}},
	}
	for c, eps := range pods {
		for _, ep := range eps {
			ep.Cluster, ep.Namespace, ep.Node = c, "demo", "n1"
			ep.NamespaceLabels = map[string]string{"kubernetes.io/metadata.name": "demo"}
		}
		if _, err := fedmeshv1.NewEndpointServiceClient(planeConn(t, p, auth.Syncer(c))).UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: c, Endpoints: eps}); err != nil {
			t.Fatalf("publish %s's pods: %v", c, err)
		}
	}
	w := func(c, pod, ip string, port uint32, app string) *fedmeshv1.Workload {
		return &fedmeshv1.Workload{Cluster: c, Namespace: "demo", Pod: pod, Ip: ip, Port: port, Labels: map[string]string{"app": app}}
	}
	now := timestamppb.Now()
	flow := func(src, dst *fedmeshv1.Workload) *fedmeshv1.Flow {
		return &fedmeshv1.Flow{Time: now, Cluster: "cluster-a", Node: "n1", Source: src, Destination: dst, Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW}
	}
	observed := []*fedmeshv1.Flow{
		flow(w("cluster-a", "web-1", "10.1.0.10", 0, "web"), w("cluster-a", "api-1", "10.1.0.12", 8080, "api")),
		flow(w("cluster-a", "api-1", "10.1.0.12", 0, "api"), w("cluster-a", "db-1", "10.1.0.13", 5432, "db")),
		flow(w("cluster-b", "api-b", "10.2.0.12", 0, "api"), w("cluster-a", "db-1", "10.1.0.13", 5432, "db")),
	}
	if acc, _ := p.r.Flows().Add("cluster-a", "n1", observed, 0); acc != len(observed) {
		t.Fatalf("flow store took %d of %d", acc, len(observed))
	}

	out, errOut, err := p.fedctl(t, auth.Admin(), "policy", "recommend", "--namespace", "demo", "--cluster", "cluster-a", "--check")
	if err != nil {
		t.Fatalf("recommend --check: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(out, "3 observed flows allowed, 0 denied;") || !strings.Contains(out, "denied, 0 allowed") || strings.Contains(out, " 0 unobserved flows") {
		t.Errorf("replay report:\n%s", out)
	}
	yamlOut, errOut, err := p.fedctl(t, auth.Admin(), "policy", "recommend", "--namespace", "demo", "--cluster", "cluster-a")
	if err != nil {
		t.Fatalf("recommend: %v %s", err, errOut)
	}
	for _, want := range []string{"kind: FederatedNetworkPolicy", "name: recommended-isolate-cluster-a", "fedmesh.io/cluster-name: cluster-b", "port: 5432"} {
		if !strings.Contains(yamlOut, want) {
			t.Errorf("recommendation lacks %q:\n%s", want, yamlOut)
		}
	}
	if _, errOut, err := p.fedctl(t, auth.Admin(), "policy", "apply", "-f", writeFile(t, "rec.yaml", yamlOut)); err != nil {
		t.Fatalf("fedctl policy apply of the recommendation: %v\n%s", err, errOut)
	}
	if _, errOut, err := p.fedctl(t, auth.Admin(), "policy", "recommend"); err == nil || !strings.Contains(errOut+err.Error(), "--namespace is required") {
		t.Errorf("recommend without a namespace: %v %s", err, errOut)
	}
}
