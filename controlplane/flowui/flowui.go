// Package flowui owns the service-graph page: a small HTML/JS page
// embedded in the control-plane binary and the HTTPS endpoints behind it,
// which read the replica's flow store (controlplane/flowstore) and Reach
// with the authority of the person who opened it.
//
// # Signing in from a browser
//
// The gRPC API authenticates with client certificates, which browsers
// handle badly. The page instead trusts a session that a certificate
// holder opens: `fedctl flows ui` calls UIService.CreateUISession over
// mTLS and gets a one-time URL (https://<replica ui address>/login?code=…,
// valid for a minute, usable once). Opening it sets a session cookie
// (HttpOnly, Secure, SameSite=Strict, 8 hours) bound to the caller's
// principal, so the page reads exactly what that principal may read over
// gRPC: an admin every flow, a cluster's syncer principal the flows
// touching its cluster. The page is served with the replica's certificate
// from the federation CA; trust that CA in the browser (or accept the
// certificate once). Sessions live in the replica's memory: they end with
// the process, and a URL works only on the replica that issued it.
//
// # What the page shows
//
// Clusters, their namespaces and workloads (pods) as nodes, destinations
// outside the federation as their own column (by the DNS name the flows
// were resolved from when they carry one, else by address), and observed
// flows of the last minutes as edges coloured by verdict (red when any
// flow of the edge was denied) with counts, refreshed every few seconds.
// Selecting an edge lists its latest flows with the policy that decided
// each and shows what Reach says for it now (for a named destination, at
// the address of the edge's newest flow: Reach decides on addresses).
package flowui

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/flowstore"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

//go:embed static
var static embed.FS

// ReachFunc answers Reach as the gRPC service does; ctx carries the
// principal (auth.WithPrincipal), already authorized by the page.
type ReachFunc func(ctx context.Context, req *fedmeshv1.ReachRequest) (*fedmeshv1.ReachResponse, error)

// Config wires a Server.
type Config struct {
	Store *flowstore.Store
	Reach ReachFunc
	// StagedFlows and StagedEdges, when set, add the staged policies'
	// verdicts (Flow.staged; FlowEdge.staged_denied and staged_denied_by)
	// as GetFlows and GetFlowSummary do, so the page says what a staged
	// policy would deny. They are called from request goroutines.
	StagedFlows func(ctx context.Context, flows []*fedmeshv1.Flow) ([]*fedmeshv1.Flow, error)
	StagedEdges func(ctx context.Context, edges []*fedmeshv1.FlowEdge) error
	// BaseURL is how browsers reach this server (https://host:port); the
	// login URLs start with it.
	BaseURL string
	Logger  *slog.Logger
	Now     func() time.Time
}

// Server serves the page and its API.
type Server struct {
	cfg      Config
	mux      *http.ServeMux
	mu       sync.Mutex
	codes    map[string]grant // one-time login codes
	sessions map[string]grant // cookie value -> session
}

type grant struct {
	p       auth.Principal
	expires time.Time
}

const (
	codeLife     = time.Minute
	sessionLife  = 8 * time.Hour
	maxSessions  = 1024
	cookieName   = "fedmesh_ui"
	defaultSince = 15 * time.Minute
	edgeFlows    = 50
)

// New returns a Server.
func New(cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), codes: map[string]grant{}, sessions: map[string]grant{}}
	files, _ := fs.Sub(static, "static")
	s.mux.Handle("GET /", s.page(http.FileServerFS(files)))
	s.mux.HandleFunc("GET /login", s.login)
	s.mux.HandleFunc("GET /api/graph", s.api(s.graph))
	s.mux.HandleFunc("GET /api/flows", s.api(s.flows))
	s.mux.HandleFunc("GET /api/reach", s.api(s.reach))
	return s
}

// ServeHTTP serves the page and its API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	s.mux.ServeHTTP(w, r)
}

// CreateSession returns a one-time login URL for p (UIService).
func (s *Server) CreateSession(p auth.Principal) (string, time.Time, error) {
	code, err := randomToken()
	if err != nil {
		return "", time.Time{}, err
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	if len(s.codes)+len(s.sessions) >= maxSessions {
		return "", time.Time{}, errors.New("too many open UI sessions on this replica; wait for some to expire")
	}
	exp := now.Add(codeLife)
	s.codes[code] = grant{p: p, expires: exp}
	return strings.TrimRight(s.cfg.BaseURL, "/") + "/login?code=" + url.QueryEscape(code), exp, nil
}

func (s *Server) expireLocked(now time.Time) {
	for k, g := range s.codes {
		if now.After(g.expires) {
			delete(s.codes, k)
		}
	}
	for k, g := range s.sessions {
		if now.After(g.expires) {
			delete(s.sessions, k)
		}
	}
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("draw a session secret: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// login trades a one-time code for a session cookie.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	code := r.URL.Query().Get("code")
	now := s.cfg.Now()
	s.mu.Lock()
	g, ok := s.codes[code]
	delete(s.codes, code)
	s.mu.Unlock()
	if !ok || now.After(g.expires) {
		http.Error(w, "this login link is unknown, used or expired: run `fedctl flows ui` for a new one", http.StatusUnauthorized)
		return
	}
	sid, err := randomToken()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.mu.Lock()
	s.sessions[sid] = grant{p: g.p, expires: now.Add(sessionLife)}
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: sid, Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, Expires: now.Add(sessionLife)})
	s.cfg.Logger.Info("UI session opened", "principal", g.p.String())
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) principal(r *http.Request) (auth.Principal, bool) {
	c, err := r.Cookie(cookieName)
	if err != nil {
		return auth.Principal{}, false
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.sessions[c.Value]
	if !ok || now.After(g.expires) {
		delete(s.sessions, c.Value)
		return auth.Principal{}, false
	}
	return g.p, true
}

// page serves the static files to a signed-in browser and a sign-in hint
// to anyone else.
func (s *Server) page(files http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := s.principal(r); !ok {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, "Not signed in. Run `fedctl flows ui` and open the link it prints.")
			return
		}
		files.ServeHTTP(w, r)
	})
}

type apiFunc func(r *http.Request, p auth.Principal) (any, error)

// badRequest is an error the caller can fix; it names the parameter.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

func (s *Server) api(fn apiFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := s.principal(r)
		if !ok {
			http.Error(w, `{"error":"not signed in"}`, http.StatusUnauthorized)
			return
		}
		v, err := fn(r, p)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err != nil {
			code := http.StatusInternalServerError
			var br badRequest
			if errors.As(err, &br) {
				code = http.StatusBadRequest
			} else if errors.Is(err, errForbidden) {
				code = http.StatusForbidden
			}
			w.WriteHeader(code)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(v)
	}
}

var errForbidden = errors.New("forbidden")

// ---- the graph ----

// Node is a box or a point of the graph.
type Node struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"` // cluster, namespace, workload, external
	Label  string `json:"label"`
	Parent string `json:"parent,omitempty"`
	// Addresses are the addresses a node named by DNS (id dns:NAME) stood
	// for in the edges drawn.
	Addresses []string `json:"addresses,omitempty"`
}

// Edge is the traffic from one workload to one workload's port.
type Edge struct {
	ID       string   `json:"id"`
	Src      string   `json:"src"`
	Dst      string   `json:"dst"`
	Proto    string   `json:"proto"`
	Port     uint32   `json:"port"`
	Allowed  uint64   `json:"allowed"`
	Denied   uint64   `json:"denied"`
	Verdict  string   `json:"verdict"` // allowed or denied (any denied flow)
	DeniedBy []string `json:"deniedBy,omitempty"`
	// StagedDenied counts the edge's flows staged policies (StagedBy)
	// would deny were they enforced now.
	StagedDenied uint64   `json:"stagedDenied,omitempty"`
	StagedBy     []string `json:"stagedBy,omitempty"`
	// DstIP is the address Reach is asked about for a destination named
	// by DNS: the edge's newest flow's.
	DstIP string `json:"dstIp,omitempty"`
}

// Graph is what the page draws.
type Graph struct {
	Principal string `json:"principal"`
	Since     string `json:"since"`
	Nodes     []Node `json:"nodes"`
	Edges     []Edge `json:"edges"`
	Stored    uint64 `json:"stored"`
	Dropped   uint64 `json:"dropped"`
}

func parseSince(r *http.Request, now time.Time) (time.Time, error) {
	v := r.URL.Query().Get("since")
	if v == "" {
		return now.Add(-defaultSince), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > 24*time.Hour {
		return time.Time{}, badRequest{fmt.Sprintf("since: %q is not a duration between 1s and 24h", v)}
	}
	return now.Add(-d), nil
}

func scope(p auth.Principal) flowstore.Scope { return flowstore.Scope{Cluster: auth.FlowScope(p)} }

func workloadID(w *fedmeshv1.Workload) string {
	if w.GetCluster() == "" {
		return "ip:" + w.GetIp()
	}
	return w.GetCluster() + "/" + w.GetNamespace() + "/" + w.GetPod()
}

func protoName(p uint32) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmpv6"
	case 132:
		return "sctp"
	}
	return strconv.FormatUint(uint64(p), 10)
}

func protoNumber(s string) (uint32, bool) {
	for _, n := range []uint32{1, 6, 17, 58, 132} {
		if protoName(n) == s {
			return n, true
		}
	}
	return 0, false
}

func policyName(k *fedmeshv1.PolicyKey) string {
	if k.GetCluster() == "" {
		return "federated/" + strings.TrimPrefix(k.GetNamespace()+"/"+k.GetName(), "/")
	}
	return k.GetCluster() + "/" + k.GetNamespace() + "/" + k.GetName()
}

func (s *Server) graph(r *http.Request, p auth.Principal) (any, error) {
	now := s.cfg.Now()
	since, err := parseSince(r, now)
	if err != nil {
		return nil, err
	}
	edges := s.cfg.Store.Summarize(flowstore.Summary{Since: since, Until: now, Window: now.Sub(since)}, scope(p))
	if s.cfg.StagedEdges != nil {
		// The graph without staged counts beats no graph.
		if err := s.cfg.StagedEdges(r.Context(), edges); err != nil {
			s.cfg.Logger.Warn("evaluate staged policies on the graph's edges", "err", err)
		}
	}
	g := Graph{Principal: p.String(), Since: since.UTC().Format(time.RFC3339), Nodes: []Node{}, Edges: []Edge{}}
	seen := map[string]bool{}
	add := func(n Node) {
		if !seen[n.ID] {
			seen[n.ID] = true
			g.Nodes = append(g.Nodes, n)
		}
	}
	var named map[string][]string // dns:NAME -> addresses
	node := func(w *fedmeshv1.Workload, name string, addrs []string) string {
		if name != "" {
			id := "dns:" + name
			add(Node{ID: id, Kind: "external", Label: name})
			if named == nil {
				named = map[string][]string{}
			}
			named[id] = append(named[id], addrs...)
			return id
		}
		id := workloadID(w)
		if w.GetCluster() == "" {
			add(Node{ID: id, Kind: "external", Label: w.GetIp()})
			return id
		}
		cl, ns := "cluster:"+w.GetCluster(), "ns:"+w.GetCluster()+"/"+w.GetNamespace()
		add(Node{ID: cl, Kind: "cluster", Label: w.GetCluster()})
		add(Node{ID: ns, Kind: "namespace", Label: w.GetNamespace(), Parent: cl})
		add(Node{ID: id, Kind: "workload", Label: w.GetPod(), Parent: ns})
		return id
	}
	for _, e := range edges {
		src, dst := node(e.GetSource(), "", nil), node(e.GetDestination(), e.GetDnsName(), e.GetDnsAddresses())
		ed := Edge{Src: src, Dst: dst, Proto: protoName(e.GetProtocol()), Port: e.GetDestination().GetPort(),
			Allowed: e.GetAllowed(), Denied: e.GetDenied(), Verdict: "allowed"}
		ed.ID = fmt.Sprintf("%s>%s:%s/%d", src, dst, ed.Proto, ed.Port)
		if e.GetDnsName() != "" {
			ed.DstIP = e.GetDestination().GetIp()
		}
		if ed.Denied > 0 {
			ed.Verdict = "denied"
		}
		for _, k := range e.GetDeniedBy() {
			ed.DeniedBy = append(ed.DeniedBy, policyName(k))
		}
		ed.StagedDenied = e.GetStagedDenied()
		for _, k := range e.GetStagedDeniedBy() {
			ed.StagedBy = append(ed.StagedBy, stagedName(k))
		}
		g.Edges = append(g.Edges, ed)
	}
	for i, n := range g.Nodes {
		if addrs := named[n.ID]; addrs != nil {
			slices.Sort(addrs)
			g.Nodes[i].Addresses = slices.Compact(addrs)
		}
	}
	slices.SortFunc(g.Nodes, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	st := s.cfg.Store.Status()
	g.Stored, g.Dropped = st.Stored, st.DroppedRate+st.DroppedAgent
	return g, nil
}

// ---- one edge's flows ----

// FlowRow is one flow of an edge as the panel lists it.
type FlowRow struct {
	Time     string `json:"time"`
	Node     string `json:"node"`
	Verdict  string `json:"verdict"`
	Decision string `json:"decision"`
	// Staged is what the staged policies would do to the flow, when it
	// differs from what happened: "would be denied by staged P".
	Staged string `json:"staged,omitempty"`
}

type edgeRef struct {
	src, dst   string
	proto      uint32
	port       uint32
	srcW, dstW *fedmeshv1.Workload
	// dstName is the DNS name of a destination given as dns:NAME; dstW
	// then holds only the address of ip, when given.
	dstName string
}

// parseEdge reads src, dst (cluster/namespace/pod, ip:ADDR or, for a
// destination, dns:NAME with the address to ask Reach about in ip),
// proto and port.
func parseEdge(r *http.Request) (edgeRef, error) {
	q := r.URL.Query()
	e := edgeRef{src: q.Get("src"), dst: q.Get("dst")}
	var err error
	if e.srcW, err = parseWorkload("src", e.src); err != nil {
		return e, err
	}
	if name, ok := strings.CutPrefix(e.dst, "dns:"); ok && name != "" {
		e.dstName, e.dstW = name, &fedmeshv1.Workload{}
		if ip := q.Get("ip"); ip != "" {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				return e, badRequest{fmt.Sprintf("ip: %q is not an address", ip)}
			}
			e.dstW.Ip = a.String()
		}
	} else if e.dstW, err = parseWorkload("dst", e.dst); err != nil {
		return e, err
	}
	proto, ok := protoNumber(q.Get("proto"))
	if !ok {
		return e, badRequest{fmt.Sprintf("proto: %q is not one of tcp, udp, sctp, icmp, icmpv6", q.Get("proto"))}
	}
	e.proto = proto
	port, err := strconv.ParseUint(q.Get("port"), 10, 16)
	if err != nil {
		return e, badRequest{fmt.Sprintf("port: %q is not a port number", q.Get("port"))}
	}
	e.port = uint32(port)
	return e, nil
}

func parseWorkload(name, v string) (*fedmeshv1.Workload, error) {
	if ip, ok := strings.CutPrefix(v, "ip:"); ok && ip != "" {
		return &fedmeshv1.Workload{Ip: ip}, nil
	}
	parts := strings.Split(v, "/")
	if len(parts) != 3 || slices.Contains(parts, "") {
		return nil, badRequest{fmt.Sprintf("%s: %q is neither cluster/namespace/pod nor ip:ADDRESS (nor, for dst, dns:NAME)", name, v)}
	}
	return &fedmeshv1.Workload{Cluster: parts[0], Namespace: parts[1], Pod: parts[2]}, nil
}

func sameSide(w, want *fedmeshv1.Workload) bool {
	if want.GetCluster() == "" {
		return w.GetCluster() == "" && w.GetIp() == want.GetIp()
	}
	return w.GetCluster() == want.GetCluster() && w.GetNamespace() == want.GetNamespace() && w.GetPod() == want.GetPod()
}

// sameDestination: a destination named by DNS is every flow out of the
// federation resolved from the name, as the summary counts it.
func (e *edgeRef) sameDestination(fl *fedmeshv1.Flow) bool {
	if e.dstName != "" {
		return fl.GetDestination().GetCluster() == "" && fl.GetDnsName() == e.dstName
	}
	return sameSide(fl.GetDestination(), e.dstW)
}

func (s *Server) flows(r *http.Request, p auth.Principal) (any, error) {
	e, err := parseEdge(r)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	since, err := parseSince(r, now)
	if err != nil {
		return nil, err
	}
	f := flowstore.Filter{}
	// Narrow in the store by the pod of one side; the rest here.
	switch {
	case e.srcW.GetCluster() != "":
		f.Cluster, f.PodNamespace, f.Pod = e.srcW.GetCluster(), e.srcW.GetNamespace(), e.srcW.GetPod()
	case e.dstW.GetCluster() != "":
		f.Cluster, f.PodNamespace, f.Pod = e.dstW.GetCluster(), e.dstW.GetNamespace(), e.dstW.GetPod()
	}
	f.DNSName = e.dstName
	all := s.cfg.Store.Query(flowstore.Query{Filter: f, Since: since, Until: now, Limit: 100_000}, scope(p))
	var match []*fedmeshv1.Flow
	for i := len(all) - 1; i >= 0 && len(match) < edgeFlows; i-- {
		fl := all[i]
		if !sameSide(fl.GetSource(), e.srcW) || !e.sameDestination(fl) ||
			fl.GetProtocol() != e.proto || fl.GetDestination().GetPort() != e.port {
			continue
		}
		match = append(match, fl)
	}
	if s.cfg.StagedFlows != nil && len(match) > 0 {
		if staged, err := s.cfg.StagedFlows(r.Context(), match); err != nil {
			s.cfg.Logger.Warn("evaluate staged policies on an edge's flows", "err", err)
		} else {
			match = staged
		}
	}
	rows := make([]FlowRow, 0, len(match))
	for _, fl := range match {
		rows = append(rows, FlowRow{Time: fl.GetTime().AsTime().UTC().Format(time.RFC3339Nano), Node: fl.GetCluster() + "/" + fl.GetNode(),
			Verdict: strings.ToLower(strings.TrimPrefix(fl.GetVerdict().String(), "VERDICT_")), Decision: decision(fl.GetDecision()), Staged: stagedNote(fl)})
	}
	return rows, nil
}

// stagedNote says what the staged policies would change for a flow (as
// fedctl flows says it).
func stagedNote(f *fedmeshv1.Flow) string {
	st := f.GetStaged()
	switch {
	case st == nil:
		return ""
	case len(st.GetDeniedBy()) > 0:
		names := make([]string, len(st.GetDeniedBy()))
		for i, k := range st.GetDeniedBy() {
			names[i] = stagedName(k)
		}
		return "would be denied by staged " + strings.Join(names, ", ")
	case st.GetVerdict() == fedmeshv1.Verdict_VERDICT_ALLOW && f.GetVerdict() == fedmeshv1.Verdict_VERDICT_DENY:
		return "would be allowed with the staged policies"
	}
	return ""
}

// stagedName names a staged policy as fedctl does.
func stagedName(k *fedmeshv1.StagedPolicyKey) string {
	if k.GetKind() == fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_CLUSTER_NETWORK_POLICY {
		return "cnp/federated/" + k.GetName()
	}
	return "federated/" + strings.TrimPrefix(k.GetNamespace()+"/"+k.GetName(), "/")
}

// decision says in words what decided a flow's reported direction.
func decision(d *fedmeshv1.FlowDecision) string {
	dir := strings.ToLower(strings.TrimPrefix(d.GetDirection().String(), "POLICY_TYPE_"))
	tier := ""
	if d.GetTier() != "" {
		tier = d.GetTier() + " tier "
	}
	switch d.GetKind() {
	case fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_RULE:
		r := d.GetRule()
		return fmt.Sprintf("%s: allowed by %spolicy %s rule %d", dir, tier, policyName(r.GetPolicy()), r.GetIndex())
	case fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NO_RULE_ALLOWS:
		var names []string
		for _, k := range d.GetSelectedBy() {
			names = append(names, policyName(k))
		}
		return fmt.Sprintf("%s: selected by %s and no rule allowed", dir, strings.Join(names, ", "))
	case fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_NOT_SELECTED:
		return dir + ": no policy selects the endpoint"
	case fedmeshv1.FlowDecisionKind_FLOW_DECISION_KIND_DATAPLANE:
		return dir + ": dataplane: " + d.GetDataplaneReason()
	}
	return dir + ": unknown"
}

// ---- Reach for an edge ----

// ReachResult is Reach's answer in the page's words.
type ReachResult struct {
	Verdict  string `json:"verdict"`
	Egress   string `json:"egress"`
	Ingress  string `json:"ingress"`
	Revision uint64 `json:"revision"`
}

func reachTarget(w *fedmeshv1.Workload) *fedmeshv1.ReachTarget {
	if w.GetCluster() == "" {
		return &fedmeshv1.ReachTarget{Target: &fedmeshv1.ReachTarget_Ip{Ip: w.GetIp()}}
	}
	return &fedmeshv1.ReachTarget{Target: &fedmeshv1.ReachTarget_Endpoint{Endpoint: &fedmeshv1.EndpointRef{
		Cluster: w.GetCluster(), Namespace: w.GetNamespace(), Name: w.GetPod()}}}
}

func (s *Server) reach(r *http.Request, p auth.Principal) (any, error) {
	e, err := parseEdge(r)
	if err != nil {
		return nil, err
	}
	if e.dstName != "" && e.dstW.GetIp() == "" {
		// Reach decides on addresses; the page sends the edge's newest.
		return nil, badRequest{fmt.Sprintf("ip: Reach needs an address of %s: give one (the graph's dstIp)", e.dstName)}
	}
	req := &fedmeshv1.ReachRequest{Source: reachTarget(e.srcW), Destination: reachTarget(e.dstW),
		Protocol: fedmeshv1.Protocol(protocolEnum(e.proto)), Port: e.port}
	if err := auth.Authorize(p, fedmeshv1.ReachService_Reach_FullMethodName, req); err != nil {
		return nil, fmt.Errorf("%w: %v", errForbidden, err)
	}
	if s.cfg.Reach == nil {
		return nil, errors.New("reach is not served by this replica")
	}
	resp, err := s.cfg.Reach(auth.WithPrincipal(r.Context(), p), req)
	if err != nil {
		return nil, fmt.Errorf("reach: %w", err)
	}
	return ReachResult{
		Verdict:  strings.ToLower(strings.TrimPrefix(resp.GetVerdict().String(), "VERDICT_")),
		Egress:   resp.GetEgress().GetExplanation(),
		Ingress:  resp.GetIngress().GetExplanation(),
		Revision: resp.GetRevision(),
	}, nil
}

// protocolEnum maps an IP protocol number to the API's Protocol.
func protocolEnum(p uint32) int32 {
	switch p {
	case 6:
		return int32(fedmeshv1.Protocol_PROTOCOL_TCP)
	case 17:
		return int32(fedmeshv1.Protocol_PROTOCOL_UDP)
	case 132:
		return int32(fedmeshv1.Protocol_PROTOCOL_SCTP)
	case 1, 58:
		return int32(fedmeshv1.Protocol_PROTOCOL_ICMP)
	}
	return 0
}
