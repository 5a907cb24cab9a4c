package flowui

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/flowstore"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// testFlows are the demo's kind of traffic: web -> api allowed in cluster-a,
// web -> db denied by a policy, a cross-cluster flow, an outside address,
// egress to a name resolving to two addresses (and a name on a flow to a
// workload, which the workload keeps), and a flow of cluster-b only.
func testStore(t testing.TB, now time.Time) *flowstore.Store {
	t.Helper()
	st := flowstore.New(flowstore.Config{Now: func() time.Time { return now }})
	w := func(cluster, ns, pod, ip string, port uint32) *fedmeshv1.Workload {
		return &fedmeshv1.Workload{Cluster: cluster, Namespace: ns, Pod: pod, Ip: ip, Port: port}
	}
	at := timestamppb.New(now.Add(-time.Minute))
	allowRule := &fedmeshv1.FlowDecision{Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, Kind: fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE,
		Rule: &fedmeshv1.RuleRef{Policy: &fedmeshv1.PolicyKey{Namespace: "demo", Name: "web-to-api"}, Index: 0}}
	denied := &fedmeshv1.FlowDecision{Direction: fedmeshv1.PolicyType_POLICY_TYPE_INGRESS, Kind: fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS,
		SelectedBy: []*fedmeshv1.PolicyKey{{Namespace: "demo", Name: "db-isolation"}}}
	add := func(cluster, node string, fl ...*fedmeshv1.Flow) {
		for _, f := range fl {
			f.Time, f.Cluster, f.Node = at, cluster, node
		}
		if acc, ref := st.Add(cluster, node, fl, 0); acc != len(fl) || ref != 0 {
			t.Fatalf("store took %d of %d flows (%d refused)", acc, len(fl), ref)
		}
	}
	add("cluster-a", "a1",
		&fedmeshv1.Flow{Source: w("cluster-a", "demo", "web-a1", "10.1.1.10", 40000), Destination: w("cluster-a", "demo", "api-a1", "10.1.1.11", 8080),
			Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, Decision: allowRule},
		&fedmeshv1.Flow{Source: w("cluster-a", "demo", "web-a1", "10.1.1.10", 40001), Destination: w("cluster-a", "demo", "db-a1", "10.1.1.12", 8080),
			Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_DENY, Decision: denied},
		&fedmeshv1.Flow{Source: w("cluster-b", "demo", "web-b1", "10.2.1.10", 40002), Destination: w("cluster-a", "demo", "api-a1", "10.1.1.11", 8080),
			Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, Decision: allowRule},
		&fedmeshv1.Flow{Source: w("", "", "", "192.0.2.7", 5555), Destination: w("cluster-a", "demo", "web-a1", "10.1.1.10", 8080),
			Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, Decision: allowRule},
		&fedmeshv1.Flow{Source: w("cluster-a", "demo", "web-a1", "10.1.1.10", 40004), Destination: w("", "", "", "192.0.2.21", 443),
			Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, Decision: allowRule, DnsName: "api.stripe.com"},
		&fedmeshv1.Flow{Source: w("cluster-a", "demo", "web-a1", "10.1.1.10", 40005), Destination: w("", "", "", "192.0.2.20", 443),
			Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, Decision: allowRule, DnsName: "api.stripe.com"},
		&fedmeshv1.Flow{Source: w("cluster-a", "demo", "web-a1", "10.1.1.10", 40006), Destination: w("cluster-a", "demo", "api-a1", "10.1.1.11", 8080),
			Protocol: 6, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, Decision: allowRule, DnsName: "api-a1.demo.svc.cluster.local"})
	add("cluster-b", "b1",
		&fedmeshv1.Flow{Source: w("cluster-b", "demo", "web-b1", "10.2.1.10", 40003), Destination: w("cluster-b", "demo", "api-b1", "10.2.1.11", 8080),
			Protocol: 17, Verdict: fedmeshv1.Verdict_VERDICT_ALLOW, Decision: allowRule})
	return st
}

type client struct {
	t    testing.TB
	base string
	c    *http.Client
}

func newServer(t testing.TB, reach ReachFunc) (*Server, *httptest.Server) {
	t.Helper()
	now := time.Now()
	s := New(Config{Store: testStore(t, now), Reach: reach})
	ts := httptest.NewTLSServer(s)
	t.Cleanup(ts.Close)
	s.cfg.BaseURL = ts.URL
	return s, ts
}

func signIn(t testing.TB, s *Server, ts *httptest.Server, p auth.Principal) *client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := ts.Client()
	c.Jar = jar
	link, _, err := s.CreateSession(p)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/" {
		t.Fatalf("login: %s at %s, want the page", resp.Status, resp.Request.URL)
	}
	return &client{t: t, base: ts.URL, c: c}
}

func (c *client) get(path string, v any) int {
	c.t.Helper()
	resp, err := c.c.Get(c.base + path)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, v); err != nil {
			c.t.Fatalf("GET %s: %v: %s", path, err, b)
		}
	}
	if v != nil && resp.StatusCode != http.StatusOK {
		_ = json.Unmarshal(b, v)
	}
	return resp.StatusCode
}

func TestLoginCodesAreOneTimeAndSessionsGuardEverything(t *testing.T) {
	s, ts := newServer(t, nil)
	anon := &client{t: t, base: ts.URL, c: ts.Client()}
	for _, path := range []string{"/", "/app.js", "/api/graph", "/api/flows?src=a/b/c&dst=a/b/d&proto=tcp&port=80"} {
		if code := anon.get(path, nil); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a session: %d, want 401", path, code)
		}
	}
	link, _, err := s.CreateSession(auth.Admin())
	if err != nil {
		t.Fatal(err)
	}
	c := signIn(t, s, ts, auth.Admin())
	if code := c.get("/app.js", nil); code != http.StatusOK {
		t.Errorf("signed in, GET /app.js: %d", code)
	}
	// The first link, used now, works once; a second use is refused.
	jar, _ := cookiejar.New(nil)
	hc := ts.Client()
	hc.Jar = jar
	for i, want := range []int{http.StatusOK, http.StatusUnauthorized} {
		resp, err := hc.Get(link)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("use %d of a login link: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
	if code := anon.get("/login?code=forged", nil); code != http.StatusUnauthorized {
		t.Errorf("a forged code: %d, want 401", code)
	}
	// The cookie is not readable by scripts and never sent over plain HTTP
	// or from another site.
	resp, err := ts.Client().Get(mustLink(t, s))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ck := resp.Request.Response.Cookies()
	if len(ck) != 1 || !ck[0].HttpOnly || !ck[0].Secure || ck[0].SameSite != http.SameSiteStrictMode {
		t.Errorf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict", ck)
	}
}

func mustLink(t testing.TB, s *Server) string {
	link, _, err := s.CreateSession(auth.Admin())
	if err != nil {
		t.Fatal(err)
	}
	return link
}

func TestGraphShowsWhatThePrincipalMayRead(t *testing.T) {
	s, ts := newServer(t, nil)
	ids := func(g Graph) (nodes, edges []string) {
		for _, n := range g.Nodes {
			nodes = append(nodes, n.ID)
		}
		for _, e := range g.Edges {
			edges = append(edges, e.ID+"="+e.Verdict)
		}
		return
	}
	var admin Graph
	if code := signIn(t, s, ts, auth.Admin()).get("/api/graph", &admin); code != http.StatusOK {
		t.Fatalf("graph: %d", code)
	}
	nodes, edges := ids(admin)
	for _, want := range []string{"cluster:cluster-a", "ns:cluster-a/demo", "cluster-a/demo/web-a1", "cluster-b/demo/api-b1", "ip:192.0.2.7"} {
		if !contains(nodes, want) {
			t.Errorf("admin graph lacks node %s: %v", want, nodes)
		}
	}
	for _, want := range []string{
		"cluster-a/demo/web-a1>cluster-a/demo/db-a1:tcp/8080=denied",
		"cluster-a/demo/web-a1>cluster-a/demo/api-a1:tcp/8080=allowed",
		"cluster-b/demo/web-b1>cluster-b/demo/api-b1:udp/8080=allowed",
		"ip:192.0.2.7>cluster-a/demo/web-a1:tcp/8080=allowed",
	} {
		if !contains(edges, want) {
			t.Errorf("admin graph lacks edge %s: %v", want, edges)
		}
	}
	var a Graph
	signIn(t, s, ts, auth.Syncer("cluster-a")).get("/api/graph", &a)
	_, aEdges := ids(a)
	if contains(aEdges, "cluster-b/demo/web-b1>cluster-b/demo/api-b1:udp/8080=allowed") {
		t.Errorf("cluster-a's principal sees a flow of cluster-b only: %v", aEdges)
	}
	if !contains(aEdges, "cluster-b/demo/web-b1>cluster-a/demo/api-a1:tcp/8080=allowed") {
		t.Errorf("cluster-a's principal does not see a flow into its cluster: %v", aEdges)
	}
	var bad map[string]string
	if code := signIn(t, s, ts, auth.Admin()).get("/api/graph?since=forever", &bad); code != http.StatusBadRequest || !strings.Contains(bad["error"], "since") {
		t.Errorf("since=forever: %d %v, want 400 naming since", code, bad)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestEdgePanelListsFlowsWithTheirDecisionAndReach(t *testing.T) {
	var asked []string
	reach := func(ctx context.Context, req *fedmeshv1.ReachRequest) (*fedmeshv1.ReachResponse, error) {
		p, _ := auth.PrincipalFrom(ctx)
		asked = append(asked, p.String()+" "+req.GetSource().GetEndpoint().GetName()+">"+req.GetDestination().GetEndpoint().GetName())
		return &fedmeshv1.ReachResponse{Verdict: fedmeshv1.Verdict_VERDICT_DENY, Revision: 42,
			Egress:  &fedmeshv1.DirectionVerdict{Explanation: "source egress: allowed: no policy selects the endpoint"},
			Ingress: &fedmeshv1.DirectionVerdict{Explanation: "destination ingress: denied: selected by demo/db-isolation"}}, nil
	}
	s, ts := newServer(t, reach)
	c := signIn(t, s, ts, auth.Admin())
	q := "src=cluster-a/demo/web-a1&dst=cluster-a/demo/db-a1&proto=tcp&port=8080"
	var rows []FlowRow
	if code := c.get("/api/flows?"+q, &rows); code != http.StatusOK {
		t.Fatalf("flows: %d", code)
	}
	if len(rows) != 1 || rows[0].Verdict != "deny" || !strings.Contains(rows[0].Decision, "selected by federated/demo/db-isolation and no rule allowed") {
		t.Errorf("edge flows %+v: want the one denied flow, decided by db-isolation", rows)
	}
	var r ReachResult
	if code := c.get("/api/reach?"+q, &r); code != http.StatusOK || r.Verdict != "deny" || r.Revision != 42 || !strings.Contains(r.Ingress, "db-isolation") {
		t.Errorf("reach: %d %+v", code, r)
	}
	if len(asked) != 1 || asked[0] != "spiffe://fedmesh/admin web-a1>db-a1" {
		t.Errorf("reach asked %v, want once as the admin for web-a1>db-a1", asked)
	}
	for _, tc := range []struct{ q, names string }{
		{"src=cluster-a/demo&dst=cluster-a/demo/db-a1&proto=tcp&port=1", "src"},
		{"src=cluster-a/demo/web-a1&dst=&proto=tcp&port=1", "dst"},
		{"src=cluster-a/demo/web-a1&dst=ip:192.0.2.1&proto=gre&port=1", "proto"},
		{"src=cluster-a/demo/web-a1&dst=ip:192.0.2.1&proto=tcp&port=70000", "port"},
	} {
		var e map[string]string
		if code := c.get("/api/flows?"+tc.q, &e); code != http.StatusBadRequest || !strings.HasPrefix(e["error"], tc.names+":") {
			t.Errorf("flows?%s: %d %v, want 400 naming %s", tc.q, code, e, tc.names)
		}
	}
	// The page asks Reach with the gRPC API's rule for the principal: a
	// replica's principal, which reads only on a caller's behalf, is refused.
	var e map[string]string
	if code := signIn(t, s, ts, auth.Replica("r1")).get("/api/reach?"+q, &e); code != http.StatusForbidden {
		t.Errorf("reach as a replica: %d %v, want 403", code, e)
	}
}

// Egress resolved from a name is one node named by it, standing for the
// name's addresses; its edge lists the flows to every address and asks
// Reach about the address the page sends. A workload keeps its own node
// whatever name a flow to it carries.
func TestGraphNamesEgressByDNSName(t *testing.T) {
	var asked []string
	reach := func(ctx context.Context, req *fedmeshv1.ReachRequest) (*fedmeshv1.ReachResponse, error) {
		asked = append(asked, req.GetSource().GetEndpoint().GetName()+">"+req.GetDestination().GetIp())
		return &fedmeshv1.ReachResponse{Verdict: fedmeshv1.Verdict_VERDICT_ALLOW}, nil
	}
	s, ts := newServer(t, reach)
	c := signIn(t, s, ts, auth.Admin())
	var g Graph
	if code := c.get("/api/graph", &g); code != http.StatusOK {
		t.Fatalf("graph: %d", code)
	}
	var named *Node
	for i, n := range g.Nodes {
		switch {
		case n.ID == "dns:api.stripe.com":
			named = &g.Nodes[i]
		case strings.HasPrefix(n.ID, "ip:192.0.2.2"), strings.HasPrefix(n.ID, "dns:api-a1"):
			t.Errorf("node %+v: a named destination's address, or a workload, drawn by itself", n)
		}
	}
	if named == nil || named.Kind != "external" || named.Label != "api.stripe.com" || strings.Join(named.Addresses, ",") != "192.0.2.20,192.0.2.21" {
		t.Fatalf("node for api.stripe.com = %+v, want an external node labelled by the name over both addresses", named)
	}
	var edge *Edge
	for i, e := range g.Edges {
		if e.ID == "cluster-a/demo/web-a1>dns:api.stripe.com:tcp/443" {
			edge = &g.Edges[i]
		}
	}
	if edge == nil || edge.Allowed != 2 || edge.DstIP != "192.0.2.20" {
		t.Fatalf("edge to api.stripe.com = %+v, want both flows and the address to ask Reach about", edge)
	}
	var api []string
	for _, e := range g.Edges {
		if e.Dst == "cluster-a/demo/api-a1" && e.Src == "cluster-a/demo/web-a1" {
			api = append(api, fmt.Sprintf("%d %q", e.Allowed, e.DstIP))
		}
	}
	if len(api) != 1 || api[0] != `2 ""` {
		t.Errorf("web-a1 -> api-a1 edges %v, want one of both flows, named or not, with no Reach address", api)
	}
	q := "src=cluster-a/demo/web-a1&dst=dns:api.stripe.com&proto=tcp&port=443"
	var rows []FlowRow
	if code := c.get("/api/flows?"+q, &rows); code != http.StatusOK || len(rows) != 2 {
		t.Fatalf("flows of the named edge: %d %+v, want the flows to both addresses", code, rows)
	}
	var r ReachResult
	if code := c.get("/api/reach?"+q+"&ip="+edge.DstIP, &r); code != http.StatusOK || r.Verdict != "allow" {
		t.Fatalf("reach: %d %+v", code, r)
	}
	if len(asked) != 1 || asked[0] != "web-a1>192.0.2.20" {
		t.Fatalf("reach asked %v, want web-a1 to the edge's address", asked)
	}
	for _, tc := range []struct{ q, names string }{
		{q, "ip"},
		{q + "&ip=api.stripe.com", "ip"},
		{"src=cluster-a/demo/web-a1&dst=dns:&proto=tcp&port=443", "dst"},
	} {
		var e map[string]string
		if code := c.get("/api/reach?"+tc.q, &e); code != http.StatusBadRequest || !strings.HasPrefix(e["error"], tc.names+":") {
			t.Errorf("reach?%s: %d %v, want 400 naming %s", tc.q, code, e, tc.names)
		}
	}
}

func TestSessionsExpire(t *testing.T) {
	now := time.Now()
	s := New(Config{Store: testStore(t, now), Now: func() time.Time { return now }})
	ts := httptest.NewTLSServer(s)
	defer ts.Close()
	s.cfg.BaseURL = ts.URL
	c := signIn(t, s, ts, auth.Admin())
	now = now.Add(sessionLife + time.Second)
	if code := c.get("/api/graph", nil); code != http.StatusUnauthorized {
		t.Errorf("after the session's life: %d, want 401", code)
	}
	link, _, _ := s.CreateSession(auth.Admin())
	now = now.Add(codeLife + time.Second)
	u, _ := url.Parse(link)
	if code := (&client{t: t, base: ts.URL, c: ts.Client()}).get(u.RequestURI(), nil); code != http.StatusUnauthorized {
		t.Errorf("a code used after a minute: %d, want 401", code)
	}
}
