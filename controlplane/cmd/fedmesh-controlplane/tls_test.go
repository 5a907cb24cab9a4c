package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	"github.com/fedmesh/fedmesh/controlplane/cptest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// pki is a test CA issuing real certificates for replicas and clients.
type pki struct {
	dir string
	ca  *ca.CA
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Init(dir, "fedmesh test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{dir: dir, ca: c}
}

// replicaDir writes a --tls-dir for replica id: the CA (with its key, so
// the replica serves join tokens) and a replica certificate for loopback.
func (p *pki) replicaDir(t testing.TB, id string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{ca.CertFile, ca.KeyFile} {
		b, err := os.ReadFile(filepath.Join(p.dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	certPEM, keyPEM, err := p.ca.Issue(ca.Leaf{ID: auth.Replica(id).URI(), Usage: ca.UsageReplica, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteCredentials(filepath.Join(dir, "replica.crt"), filepath.Join(dir, "replica.key"), certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return dir
}

// creds are client credentials of principal pr.
func (p *pki) creds(t testing.TB, pr auth.Principal) grpc.DialOption {
	t.Helper()
	certPEM, keyPEM, err := p.ca.Issue(ca.Leaf{ID: pr.URI(), Usage: ca.UsageClient, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.NewCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(p.ca.Pool(), cert)))
}

func (p *pki) dial(t testing.TB, addr string, opt grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func revisions(t testing.TB, g *group) []uint64 {
	t.Helper()
	var out []uint64
	for _, r := range g.reps {
		st, err := g.status(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, st.GetRevision())
	}
	return out
}

func TestMTLSAuthorizesEveryCallerAndRejectsStrangers(t *testing.T) {
	p := newPKI(t)
	g := startGroupWith(t, 3, p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lead := g.leader(30 * time.Second)
	follower := g.followers(lead)[0]
	admin := fedmeshv1.NewClusterServiceClient(follower.conn)
	for _, c := range []*fedmeshv1.Cluster{{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}, {Name: "b", PodCidrs: []string{"10.2.0.0/16"}}} {
		if _, err := admin.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: c}); err != nil {
			t.Fatalf("admin registers %s through a follower: %v", c.GetName(), err)
		}
	}
	syncerA := fedmeshv1.NewEndpointServiceClient(p.dial(t, follower.grpcAddr, p.creds(t, auth.Syncer("a"))))
	if _, err := syncerA.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "a", Endpoints: []*fedmeshv1.Endpoint{
		{Namespace: "x", Name: "p", Ips: []string{"10.1.0.1"}, Node: "n1"}}}); err != nil {
		t.Fatalf("syncer of a writes a's endpoint through a follower: %v", err)
	}
	before := g.waitSameRevision(10 * time.Second)

	foreign := newPKI(t)
	tests := []struct {
		name string
		call func() error
		want []codes.Code
	}{
		{"syncer of a writes an endpoint of b", func() error {
			_, err := syncerA.UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "b", Endpoints: []*fedmeshv1.Endpoint{
				{Namespace: "x", Name: "p", Ips: []string{"10.2.0.1"}, Node: "n1"}}})
			return err
		}, []codes.Code{codes.PermissionDenied}},
		{"agent writes a policy", func() error {
			c := fedmeshv1.NewPolicyServiceClient(p.dial(t, lead.grpcAddr, p.creds(t, auth.Node("a", "n1"))))
			_, err := c.ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{
				Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Name: "open", Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{}}}}})
			return err
		}, []codes.Code{codes.PermissionDenied}},
		{"client posing as a replica calls Propose", func() error {
			c := fedmeshv1.NewControlPlaneServiceClient(p.dial(t, lead.grpcAddr, p.creds(t, auth.Admin())))
			_, err := c.Propose(ctx, &fedmeshv1.ProposeRequest{Command: []byte{1}})
			return err
		}, []codes.Code{codes.PermissionDenied}},
		{"no client certificate", func() error {
			c := fedmeshv1.NewClusterServiceClient(p.dial(t, lead.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(p.ca.Pool(), nil)))))
			_, err := c.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "c", PodCidrs: []string{"10.3.0.0/16"}}})
			return err
		}, []codes.Code{codes.Unauthenticated, codes.PermissionDenied}},
		{"certificate of a foreign CA", func() error {
			c := fedmeshv1.NewClusterServiceClient(p.dial(t, lead.grpcAddr, foreign.creds(t, auth.Admin())))
			_, err := c.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "c", PodCidrs: []string{"10.3.0.0/16"}}})
			return err
		}, []codes.Code{codes.Unavailable, codes.Unauthenticated}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			ok := false
			for _, c := range tt.want {
				ok = ok || status.Code(err) == c
			}
			if !ok {
				t.Fatalf("got %v, want one of %v", err, tt.want)
			}
			time.Sleep(100 * time.Millisecond)
			for i, rev := range revisions(t, g) {
				if rev != before {
					t.Fatalf("replica %s moved to revision %d (was %d)", g.reps[i].id, rev, before)
				}
			}
		})
	}
}

func TestJoinTokenIsSingleUseAcrossReplicas(t *testing.T) {
	p := newPKI(t)
	g := startGroupWith(t, 3, p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g.leader(30 * time.Second)
	r1, r2 := g.reps[0], g.reps[1]
	if _, err := fedmeshv1.NewClusterServiceClient(r1.conn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	tok, err := fedmeshv1.NewAuthServiceClient(r1.conn).CreateJoinToken(ctx, &fedmeshv1.CreateJoinTokenRequest{Cluster: "a", Node: "n1", Ttl: durationpb.New(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	anon := grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(p.ca.Pool(), nil)))
	certPEM, keyPEM, err := auth.JoinWithToken(ctx, fedmeshv1.NewAuthServiceClient(p.dial(t, r1.grpcAddr, anon)), tok.GetToken())
	if err != nil {
		t.Fatalf("join on %s: %v", r1.id, err)
	}
	cert, err := auth.NewCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if pr, err := cert.Principal(); err != nil || pr != auth.Node("a", "n1") {
		t.Fatalf("joined as %v (%v)", pr, err)
	}
	_, _, err = auth.JoinWithToken(ctx, fedmeshv1.NewAuthServiceClient(p.dial(t, r2.grpcAddr, anon)), tok.GetToken())
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("token reused on %s: %v, want Unauthenticated", r2.id, err)
	}
}

func TestReplicaWithAForeignCertificateCannotJoinRaft(t *testing.T) {
	p := newPKI(t)
	g := startGroupWith(t, 3, p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	foreign := newPKI(t)
	intruder := &replica{id: "r9", tlsDir: foreign.replicaDir(t, "r9")}
	// The intruder trusts its own CA; the test talks to it with that CA.
	g.pki, intruder.joiner = foreign, true
	g.reps = append(g.reps, intruder)
	addrs := cptest.FreeAddrs(t, 2)
	intruder.raftAddr, intruder.grpcAddr, intruder.dataDir = addrs[0], addrs[1], t.TempDir()
	intruder.logPath = filepath.Join(intruder.dataDir, "..", "r9.log")
	g.start(intruder)
	g.pki = p
	lead := g.leader(30 * time.Second)
	admin := fedmeshv1.NewControlPlaneServiceClient(lead.conn)
	if _, err := admin.AddMember(ctx, &fedmeshv1.AddMemberRequest{Id: "r9", RaftAddress: intruder.raftAddr, Nonvoter: true}); err != nil {
		t.Fatalf("add member: %v", err)
	}
	if _, err := fedmeshv1.NewClusterServiceClient(lead.conn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	st, err := g.status(ctx, intruder)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetAppliedIndex() != 0 || st.GetRevision() != 0 || st.GetLeaderId() != "" {
		t.Fatalf("replica with a foreign certificate got Raft state: %v", st)
	}
	if _, err := admin.RemoveMember(ctx, &fedmeshv1.RemoveMemberRequest{Id: "r9"}); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Logf("remove intruder: %v", err)
	}
	g.kill(intruder)
	g.reps = g.reps[:3]
}
