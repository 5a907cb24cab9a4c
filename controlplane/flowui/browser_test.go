package flowui

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// chromium finds the browser the page is tested in (Debian's chromium,
// installed by make deps); it may skip on a laptop, never under CI.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "the service-graph page is tested in headless Chromium: apt-get install chromium (make deps does)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// TestPageInHeadlessChromium loads the page as a browser does: the login
// link, the cookie, the redirect, the script drawing the graph from the
// API, and an edge selected from the URL showing its flows and Reach. The
// browser trusts exactly the test server's key (no blanket ignoring of
// certificate errors). A screenshot is kept as a test artifact.
func TestPageInHeadlessChromium(t *testing.T) {
	bin := chromium(t)
	s, ts := newServer(t, (&fakeReach{}).reach)
	s.cfg.StagedFlows, s.cfg.StagedEdges = stagedLockdown, stagedLockdownEdges
	spki := sha256.Sum256(ts.Certificate().RawSubjectPublicKeyInfo)
	link, _, err := s.CreateSession(auth.Admin())
	if err != nil {
		t.Fatal(err)
	}
	edge := "cluster-a/demo/web-a1>cluster-a/demo/db-a1:tcp/8080"
	run := func(extra ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
			"--user-data-dir=" + t.TempDir(),
			"--ignore-certificate-errors-spki-list=" + base64.StdEncoding.EncodeToString(spki[:]),
			"--virtual-time-budget=10000", "--window-size=1400,900"}, extra...)
		args = append(args, link+"#select="+url.QueryEscape(edge))
		out, err := exec.CommandContext(ctx, bin, args...).Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", extra, err)
		}
		return string(out)
	}
	dom := run("--dump-dom")
	for _, want := range []string{
		`data-loaded="true"`,
		`data-node="cluster:cluster-a"`,
		`data-node="cluster-a/demo/web-a1"`,
		`data-node="cluster-b/demo/api-b1"`,
		`data-node="ip:192.0.2.7"`,
		`data-verdict="denied"`,
		`data-edge="` + strings.ReplaceAll(edge, ">", "&gt;") + `"`,
		`selected by federated/demo/db-isolation and no rule allowed`,
		`destination ingress: denied: selected by demo/db-isolation`,
		`as spiffe://fedmesh/admin`,
		// The selected edge's flow and its counts say what the staged
		// policy would deny.
		`no rule allowed; would be denied by staged federated/demo/db-lockdown`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	// Egress by name: one node labelled with the name, its addresses in
	// its title.
	if !regexp.MustCompile(`data-node="dns:api\.stripe\.com"><circle[^>]*></circle><text[^>]*>api\.stripe\.com</text><title>api\.stripe\.com: 192\.0\.2\.20, 192\.0\.2\.21</title>`).MatchString(dom) {
		t.Error("the page lacks the node of api.stripe.com labelled with the name over its two addresses")
	}
	if strings.Contains(dom, `data-node="ip:192.0.2.20"`) {
		t.Error("the page draws an address of api.stripe.com by itself")
	}
	if !regexp.MustCompile(`id="edge-counts"[^>]*>[^<]* — \d+ would be denied by staged federated/demo/db-lockdown<`).MatchString(dom) {
		t.Error("the selected edge's counts lack how many flows the staged policy would deny")
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}
	// The login link is single use: the browser used it.
	if _, ok := s.codes[strings.TrimPrefix(must(url.Parse(link)).RawQuery, "code=")]; ok {
		t.Error("the login code is still open after the browser used it")
	}
	shot := filepath.Join(t.ArtifactDir(), "service-graph.png")
	link2, _, _ := s.CreateSession(auth.Admin())
	link = link2
	run("--screenshot=" + shot)
	if st, err := os.Stat(shot); err != nil || st.Size() < 10_000 {
		t.Errorf("screenshot %s: %v (%d bytes)", shot, err, sizeOf(st))
	}
}

// stagedLockdown and stagedLockdownEdges stand for the replica's staged
// evaluation (controlplane/server tests the real one through the page's
// API): a staged federated/demo/db-lockdown denies every flow to db-a1.
func stagedLockdown(_ context.Context, flows []*fedmeshv1.Flow) ([]*fedmeshv1.Flow, error) {
	out := make([]*fedmeshv1.Flow, len(flows))
	for i, f := range flows {
		out[i] = proto.CloneOf(f)
		if f.GetDestination().GetPod() == "db-a1" {
			out[i].Staged = &fedmeshv1.StagedFlowVerdict{Verdict: fedmeshv1.Verdict_VERDICT_DENY, DeniedBy: []*fedmeshv1.StagedPolicyKey{lockdownKey}}
		}
	}
	return out, nil
}

var lockdownKey = &fedmeshv1.StagedPolicyKey{Kind: fedmeshv1.StagedPolicyKind_STAGED_POLICY_KIND_NETWORK_POLICY, Namespace: "demo", Name: "db-lockdown"}

func stagedLockdownEdges(_ context.Context, edges []*fedmeshv1.FlowEdge) error {
	for _, e := range edges {
		if e.GetDestination().GetPod() == "db-a1" {
			e.StagedDenied, e.StagedDeniedBy = e.GetAllowed()+e.GetDenied(), []*fedmeshv1.StagedPolicyKey{lockdownKey}
		}
	}
	return nil
}

type fakeReach struct{}

func (fakeReach) reach(ctx context.Context, req *fedmeshv1.ReachRequest) (*fedmeshv1.ReachResponse, error) {
	return &fedmeshv1.ReachResponse{Verdict: fedmeshv1.Verdict_VERDICT_DENY, Revision: 7,
		Egress:  &fedmeshv1.DirectionVerdict{Explanation: "source egress: allowed: no policy selects the endpoint"},
		Ingress: &fedmeshv1.DirectionVerdict{Explanation: "destination ingress: denied: selected by demo/db-isolation"}}, nil
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func sizeOf(st os.FileInfo) int64 {
	if st == nil {
		return 0
	}
	return st.Size()
}
