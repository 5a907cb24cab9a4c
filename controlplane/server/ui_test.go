package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// TestServiceGraphPageSignsInThroughTheAPI: a certificate holder gets a
// one-time link over gRPC; a browser (here a Go client trusting the
// federation CA) opens the page with it over HTTPS with the replica's
// certificate and reads the flows agents shipped, as that principal.
func TestServiceGraphPageSignsInThroughTheAPI(t *testing.T) {
	g := startTLSGroup(t, 1, func(c *Config) { c.UIAddr = "127.0.0.1:0" })
	lead := g.leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := g.conn(t, lead, auth.Admin())
	if _, err := fedmeshv1.NewClusterServiceClient(admin).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	node := g.conn(t, lead, auth.Node("a", "n1"))
	if _, err := fedmeshv1.NewNodeServiceClient(node).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{
		Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ship(ctx, fedmeshv1.NewFlowServiceClient(node), &fedmeshv1.ShipFlowsRequest{Cluster: "a", Node: "n1",
		Flows: []*fedmeshv1.Flow{testFlow("a", "a", 5432, true)}}); err != nil {
		t.Fatal(err)
	}

	// Nodes do not open browser sessions.
	if _, err := fedmeshv1.NewUIServiceClient(node).CreateUISession(ctx, &fedmeshv1.CreateUISessionRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a node opens a UI session: %v, want PermissionDenied", err)
	}
	resp, err := fedmeshv1.NewUIServiceClient(admin).CreateUISession(ctx, &fedmeshv1.CreateUISessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(resp.GetUrl(), "https://"+lead.ui.lis.Addr().String()+"/login?code=") {
		t.Fatalf("login link %s does not point at the replica's page", resp.GetUrl())
	}
	roots := x509.NewCertPool()
	roots.AddCert(g.ca.Certificate())
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	page, err := browser.Get(resp.GetUrl())
	if err != nil {
		t.Fatalf("open the page with the federation CA as the only trust: %v", err)
	}
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if page.StatusCode != http.StatusOK || !strings.Contains(string(body), "fedmesh service graph") {
		t.Fatalf("page: %s\n%s", page.Status, body)
	}
	gr, err := browser.Get("https://" + lead.ui.lis.Addr().String() + "/api/graph")
	if err != nil {
		t.Fatal(err)
	}
	defer gr.Body.Close()
	var graph struct {
		Principal string
		Edges     []struct{ ID, Verdict string }
	}
	if err := json.NewDecoder(gr.Body).Decode(&graph); err != nil {
		t.Fatal(err)
	}
	if graph.Principal != auth.Admin().String() || len(graph.Edges) != 1 || graph.Edges[0].Verdict != "denied" {
		t.Errorf("graph as the admin: %+v, want one denied edge", graph)
	}

	// With a policy staged that would deny the edge, the page says so on
	// the edge and on its flows, evaluated by the replica's Reach engine.
	if _, err := fedmeshv1.NewEndpointServiceClient(g.conn(t, lead, auth.Syncer("a"))).UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "a",
		Endpoints: []*fedmeshv1.Endpoint{
			{Cluster: "a", Namespace: "demo", Name: "web", Ips: []string{"10.1.1.11"}, Node: "n1", Labels: map[string]string{"app": "web"}},
			{Cluster: "a", Namespace: "demo", Name: "db", Ips: []string{"10.1.1.12"}, Node: "n1", Labels: map[string]string{"app": "db"}},
		}}); err != nil {
		t.Fatal(err)
	}
	if _, err := fedmeshv1.NewStagedPolicyServiceClient(admin).StagePolicy(ctx, &fedmeshv1.StagePolicyRequest{Policy: stagedNP(dbLockdown(0))}); err != nil {
		t.Fatal(err)
	}
	getJSON := func(path string, v any) {
		t.Helper()
		r, err := browser.Get("https://" + lead.ui.lis.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		if err := json.NewDecoder(r.Body).Decode(v); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	var staged struct {
		Edges []struct {
			StagedDenied uint64
			StagedBy     []string
		}
	}
	getJSON("/api/graph", &staged)
	if len(staged.Edges) != 1 || staged.Edges[0].StagedDenied != 1 || strings.Join(staged.Edges[0].StagedBy, ",") != "federated/demo/db-lockdown" {
		t.Errorf("graph with db-lockdown staged: %+v, want the edge's flow counted as denied by staged federated/demo/db-lockdown", staged.Edges)
	}
	var rows []struct{ Staged string }
	getJSON("/api/flows?src=a/demo/web&dst=a/demo/db&proto=tcp&port=5432", &rows)
	if len(rows) != 1 || rows[0].Staged != "would be denied by staged federated/demo/db-lockdown" {
		t.Errorf("edge flows with db-lockdown staged: %+v, want the flow marked as denied by staged federated/demo/db-lockdown", rows)
	}
}

func TestServiceGraphPageNeedsTLS(t *testing.T) {
	_, err := Start(Config{NodeID: "r1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", Insecure: true, UIAddr: "127.0.0.1:0",
		Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "needs TLS") {
		t.Errorf("an insecure replica with a UI address: %v, want a refusal naming TLS", err)
	}
}
