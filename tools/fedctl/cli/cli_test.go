package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestParsePeer(t *testing.T) {
	cases := []struct {
		in      string
		addr    string
		asn     uint32
		pw      string
		wantErr string
	}{
		{in: "198.18.1.1:65001", addr: "198.18.1.1", asn: 65001},
		{in: "198.18.1.1:65001:s3cret", addr: "198.18.1.1", asn: 65001, pw: "s3cret"},
		{in: "[fd00::1]:65001", addr: "fd00::1", asn: 65001},
		{in: "[fd00::1]:65001:pw:with:colons", addr: "fd00::1", asn: 65001, pw: "pw:with:colons"},
		{in: "198.18.1.1", wantErr: "want ADDRESS:ASN"},
		{in: "198.18.1.1:x", wantErr: "not a number"},
		{in: "[fd00::1]65001", wantErr: "want [IPV6]:ASN"},
	}
	for _, tc := range cases {
		p, err := parsePeer(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parsePeer(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || p.Address != tc.addr || p.Asn != tc.asn || p.Password != tc.pw {
			t.Errorf("parsePeer(%q) = %v, %v", tc.in, p, err)
		}
	}
}

func TestParseTargetAndPolicyKey(t *testing.T) {
	if tg, err := parseTarget("fd00:1::5"); err != nil || tg.GetIp() != "fd00:1::5" {
		t.Errorf("ip target = %v, %v", tg, err)
	}
	if tg, err := parseTarget("east/shop/web-0"); err != nil || tg.GetEndpoint().GetName() != "web-0" || tg.GetEndpoint().GetCluster() != "east" {
		t.Errorf("endpoint target = %v, %v", tg, err)
	}
	for _, bad := range []string{"east/web-0", "east//web-0", "10.0.0.300"} {
		if _, err := parseTarget(bad); err == nil {
			t.Errorf("parseTarget(%q) accepted", bad)
		}
	}
	for in, want := range map[string]*fedmeshv1.PolicyKey{
		"east/shop/allow":      {Cluster: "east", Namespace: "shop", Name: "allow"},
		"federated/allow":      {Name: "allow"},
		"federated/shop/allow": {Namespace: "shop", Name: "allow"},
	} {
		k, err := parsePolicyKey(in)
		if err != nil || k.Cluster != want.Cluster || k.Namespace != want.Namespace || k.Name != want.Name {
			t.Errorf("parsePolicyKey(%q) = %v, %v", in, k, err)
		}
	}
	if _, err := parsePolicyKey("east/allow"); err == nil {
		t.Error("parsePolicyKey accepted a cluster policy without namespace")
	}
}

func TestReadManifestsGroupsByOwner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}}
---
apiVersion: fedmesh.io/v1
kind: FederatedNetworkPolicy
metadata: {name: dns}
spec:
  podSelector: {}
  egress: [{to: [{clusterSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]}]
  policyTypes: [Egress]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := readManifests(path, "east")
	if err != nil {
		t.Fatal(err)
	}
	byOwner := m.byOwner
	if len(byOwner["east"]) != 1 || len(byOwner[""]) != 1 {
		t.Fatalf("owners = %v", byOwner)
	}
	for owner, pols := range byOwner {
		if err := model.ValidateApplyPolicies(&fedmeshv1.ApplyPoliciesRequest{Cluster: owner, Policies: pols}); err != nil {
			t.Errorf("owner %q: %v", owner, err)
		}
	}
	if _, err := readManifests(path, ""); err == nil || !strings.Contains(err.Error(), "give --cluster") {
		t.Errorf("NetworkPolicy without --cluster: err = %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"), 0o600)
	if _, err := readManifests(bad, "east"); err == nil || !strings.Contains(err.Error(), "unsupported v1/Pod") {
		t.Errorf("Pod manifest: err = %v", err)
	}
}

func TestDescribeShowsEachFieldViolationOnce(t *testing.T) {
	one := model.ValidateCluster(&fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.0.0.1/8"}})
	two := model.ValidateCluster(&fedmeshv1.Cluster{Name: "East", PodCidrs: []string{"10.0.0.1/8"}})
	v1, v2 := model.FieldErrors(two)[0].Error(), model.FieldErrors(two)[1].Error()
	if !strings.HasPrefix(v1, "cluster.name: ") || !strings.HasPrefix(v2, "cluster.podCIDRs[0]: ") {
		t.Fatalf("validation changed: %v", two)
	}
	cases := []struct {
		name string
		err  error
		want string
	}{
		{name: "one violation, inline", err: status.Convert(one).Err(), want: "InvalidArgument: " + v2},
		{name: "two violations, one per line", err: status.Convert(two).Err(), want: "InvalidArgument\n  " + v1 + "\n  " + v2},
		{name: "context the client added is kept, the code said once", err: fmt.Errorf("wait for revision 3: %w", status.Convert(one).Err()),
			want: "InvalidArgument: wait for revision 3: " + v2},
		{name: "no violations", err: status.Error(codes.NotFound, `policy "x" not found`), want: `NotFound: policy "x" not found`},
		{name: "wrapped, no violations", err: fmt.Errorf("create join token: %w", status.Error(codes.PermissionDenied, "admins only")),
			want: "PermissionDenied: create join token: admins only"},
		{name: "not gRPC", err: errors.New("plain"), want: "plain"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := describe(tc.err); got != tc.want {
				t.Errorf("describe =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	env := newTestEnv(t)
	for _, args := range [][]string{{"--version"}, {"--help"}, {"policy", "apply", "--help"}, {"reach", "--help"}, {"config", "--help"}} {
		out, errOut, code := env.run(args...)
		if code != 0 {
			t.Errorf("%v: exit %d (%s)", args, code, errOut)
		}
		if out == "" {
			t.Errorf("%v printed nothing", args)
		}
	}
}

func TestCommandsThatDialNeedCredentialsOrExplicitInsecureDev(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		errHas string
	}{
		{"no flags", []string{"cluster", "list"}, "give --ca, --cert and --key"},
		{"no flags names the dev escape", []string{"policy", "list"}, "or --insecure-dev against a development control plane"},
		{"no flags names contexts", []string{"policy", "list"}, "or use a context ('fedctl config set-context')"},
		{"insecure with a CA", []string{"--insecure-dev", "--ca", "/nonexistent/ca.crt", "cluster", "list"}, "--insecure-dev excludes --ca"},
		{"cert without key", []string{"--ca", "testdata/none.crt", "--cert", "a.crt", "cluster", "list"}, "give --cert and --key together"},
		{"unreadable CA names where it came from", []string{"--ca", "testdata/none.crt", "cluster", "list"}, "CA from --ca: read CA certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := newTestEnv(t).run(append(tt.args, "--timeout", "1s")...)
			if code != 1 || !strings.Contains(errOut, tt.errHas) {
				t.Fatalf("exit %d, stderr %q; want 1 and a message containing %q", code, errOut, tt.errHas)
			}
		})
	}
}

func TestProtocolsAreNamedNotNumbered(t *testing.T) {
	manifest := func(kind, protocol string) string {
		api := "networking.k8s.io/v1"
		if kind == "FederatedNetworkPolicy" {
			api = "fedmesh.io/v1"
		}
		return "apiVersion: " + api + "\nkind: " + kind + "\nmetadata: {name: p, namespace: shop}\nspec:\n  podSelector: {}\n" +
			"  egress: [{ports: [{port: 53}]}, {ports: [{port: 53}, {protocol: " + protocol + "}]}]\n  policyTypes: [Egress]\n"
	}
	cases := []struct {
		name, kind, protocol string
		wantErr              string // from reading the manifest ("" when it reads)
		wantServer           string // from the API edge's validation
	}{
		{name: "ICMP reaches the server and comes back by name", kind: "NetworkPolicy", protocol: "ICMP",
			wantServer: `policies[0].spec.egress[1].ports[1].protocol: Unsupported value: "ICMP"`},
		{name: "ICMP in a federated policy", kind: "FederatedNetworkPolicy", protocol: "ICMP",
			wantServer: `Unsupported value: "ICMP"`},
		{name: "a name the API lacks is refused by name", kind: "FederatedNetworkPolicy", protocol: "GRE",
			wantErr: `document 1: spec.egress[1].ports[1].protocol: unknown protocol "GRE"`},
		{name: "names are case-sensitive as in Kubernetes", kind: "NetworkPolicy", protocol: "icmp",
			wantErr: `unknown protocol "icmp": want TCP, UDP or SCTP (names are upper case)`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "p.yaml")
			if err := os.WriteFile(path, []byte(manifest(tc.kind, tc.protocol)), 0o600); err != nil {
				t.Fatal(err)
			}
			byOwner, err := readManifests(path, "east")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("readManifests error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for owner, pols := range byOwner.byOwner {
				err := model.ValidateApplyPolicies(&fedmeshv1.ApplyPoliciesRequest{Cluster: owner, Policies: pols})
				msg := describe(status.Convert(err).Err())
				if !strings.Contains(msg, tc.wantServer) || strings.Contains(msg, "-1") {
					t.Errorf("server says %q, want %q and no protocol number", msg, tc.wantServer)
				}
			}
		})
	}
}

func TestReachAndFlowsNameProtocolsAndDropICMPPorts(t *testing.T) {
	resp := &fedmeshv1.ReachResponse{Verdict: fedmeshv1.Verdict_VERDICT_DENY, Revision: 7}
	for _, tc := range []struct {
		protocol string
		port     uint32
		want     string
	}{
		{"icmp", 0, "a -> b icmp: DENIED (revision 7)\n"},
		{"ICMP", 80, "a -> b icmp: DENIED (revision 7)\n"},
		{"tcp", 5432, "a -> b tcp/5432: DENIED (revision 7)\n"},
	} {
		var b strings.Builder
		printReach(&b, "a", "b", tc.protocol, tc.port, resp)
		if first, _, _ := strings.Cut(b.String(), "\n"); first+"\n" != tc.want {
			t.Errorf("reach %s/%d prints %q, want %q", tc.protocol, tc.port, first, tc.want)
		}
	}
	ext := func(ip string, port uint32) *fedmeshv1.Workload { return &fedmeshv1.Workload{Ip: ip, Port: port} }
	for _, tc := range []struct {
		f    *fedmeshv1.Flow
		want string
	}{
		{&fedmeshv1.Flow{Source: ext("10.0.0.1", 8), Destination: ext("10.0.0.2", 0), Protocol: 1}, "10.0.0.1 -> 10.0.0.2 icmp"},
		{&fedmeshv1.Flow{Source: ext("fd00::1", 0), Destination: ext("fd00::2", 0), Protocol: 58}, "fd00::1 -> fd00::2 icmp"},
		{&fedmeshv1.Flow{Source: ext("10.0.0.1", 40000), Destination: ext("10.0.0.2", 443), Protocol: 6}, "10.0.0.1:40000 -> 10.0.0.2:443 tcp"},
		{&fedmeshv1.Flow{Source: ext("fd00::1", 40000), Destination: ext("fd00::2", 443), Protocol: 17}, "[fd00::1]:40000 -> [fd00::2]:443 udp"},
		{&fedmeshv1.Flow{Source: &fedmeshv1.Workload{Cluster: "a", Namespace: "demo", Pod: "web", Ip: "10.0.0.1", Port: 1}, Destination: ext("10.0.0.2", 0), Protocol: 47},
			"a/demo/web(10.0.0.1:1) -> 10.0.0.2:0 proto 47"},
	} {
		if got := flowTuple(tc.f); got != tc.want {
			t.Errorf("flowTuple(%v) = %q, want %q", tc.f, got, tc.want)
		}
	}
}
