package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	"github.com/fedmesh/fedmesh/controlplane/cptest"
	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// tlsGroup is a Raft group of replicas in this process serving mTLS with
// a test CA, as a deployment runs (forwarding between replicas included).
type tlsGroup struct {
	ca   *ca.CA
	reps []*Replica
}

func startTLSGroup(t *testing.T, n int, opts ...func(*Config)) *tlsGroup {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Init(dir, "server test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	g := &tlsGroup{ca: c}
	addrs := cptest.FreeAddrs(t, 2*n)
	var peers []Peer
	for i := range n {
		peers = append(peers, Peer{ID: fmt.Sprintf("r%d", i+1), RaftAddr: addrs[2*i], GRPCAddr: addrs[2*i+1]})
	}
	for _, p := range peers {
		certPEM, keyPEM, err := c.Issue(ca.Leaf{ID: auth.Replica(p.ID).URI(), Usage: ca.UsageReplica, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Lifetime: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		certPath, keyPath := filepath.Join(dir, p.ID+".crt"), filepath.Join(dir, p.ID+".key")
		if err := ca.WriteCredentials(certPath, keyPath, certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
		cfg := Config{NodeID: p.ID, DataDir: t.TempDir(), RaftAddr: p.RaftAddr, GRPCAddr: p.GRPCAddr, BootstrapPeers: peers,
			RaftTimeout: 200 * time.Millisecond, TLS: &TLSConfig{CAFile: filepath.Join(dir, ca.CertFile), CertFile: certPath, KeyFile: keyPath},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		for _, o := range opts {
			o(&cfg)
		}
		r, err := Start(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Stop)
		g.reps = append(g.reps, r)
	}
	return g
}

// conn dials replica r as principal p.
func (g *tlsGroup) conn(t *testing.T, r *Replica, p auth.Principal) *grpc.ClientConn {
	t.Helper()
	certPEM, keyPEM, err := g.ca.Issue(ca.Leaf{ID: p.URI(), Usage: ca.UsageClient, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.NewCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(r.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(g.ca.Pool(), cert))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// leader waits until one replica leads and every replica has seen every
// replica publish a log format with the audit header (the replica a client
// calls is the one that encodes the header, so a follower that has not yet
// applied the others' member records would still write without it), and
// returns the leader.
func (g *tlsGroup) leader(t *testing.T) *Replica {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var lead *Replica
		all := true
		for _, r := range g.reps {
			if r.Raft().State() == raft.Leader && r.core.leaderReady.Load() {
				lead = r
			}
			if r.core.refreshLogFormat() < store.LogFormatAudit {
				all = false
			}
		}
		if lead != nil && all {
			return lead
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no leader with every replica at log format 2")
	return nil
}

func (g *tlsGroup) followers(lead *Replica) []*Replica {
	var out []*Replica
	for _, r := range g.reps {
		if r != lead {
			out = append(out, r)
		}
	}
	return out
}

// waitRevision waits until every replica has applied rev.
func (g *tlsGroup) waitRevision(t *testing.T, rev uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, r := range g.reps {
		for r.FSM().Revision() < rev {
			if time.Now().After(deadline) {
				t.Fatalf("replica at revision %d, want %d", r.FSM().Revision(), rev)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Every committed write records the principal that made it — for a write a
// follower forwarded, the follower's caller, never the follower — and the
// leader's time; objects, watch events and the audit log show the same on
// every replica, and only admins read the audit log.
func TestWritesRecordTheirPrincipalAndTimeOnEveryReplicaThroughForwarding(t *testing.T) {
	g := startTLSGroup(t, 3)
	lead := g.leader(t)
	follower := g.followers(lead)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, syncerA := auth.Admin(), auth.Syncer("a")

	before := time.Now()
	if _, err := fedmeshv1.NewClusterServiceClient(g.conn(t, lead, admin)).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{
		Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	// The syncer writes through a follower, which forwards to the leader.
	up, err := fedmeshv1.NewEndpointServiceClient(g.conn(t, follower, syncerA)).UpsertEndpoints(ctx, &fedmeshv1.UpsertEndpointsRequest{Cluster: "a",
		Endpoints: []*fedmeshv1.Endpoint{{Namespace: "web", Name: "p1", Ips: []string{"10.1.0.1"}, Node: "n1"}}})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := fedmeshv1.NewPolicyServiceClient(g.conn(t, follower, admin)).ApplyPolicies(ctx, &fedmeshv1.ApplyPoliciesRequest{Policies: []*fedmeshv1.Policy{{
		Kind: fedmeshv1.PolicyKind_POLICY_KIND_FEDERATED, Name: "deny-all", Spec: &fedmeshv1.NetworkPolicySpec{PodSelector: &fedmeshv1.LabelSelector{}}}}})
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	g.waitRevision(t, pol.GetRevision())

	var firstEndpoint *fedmeshv1.Endpoint
	var firstAudit []*fedmeshv1.AuditRecord
	for _, r := range g.reps {
		node := g.conn(t, r, auth.Node("a", "n1"))
		eps, err := fedmeshv1.NewEndpointServiceClient(node).ListEndpoints(ctx, &fedmeshv1.ListEndpointsRequest{Cluster: "a"})
		if err != nil || len(eps.GetEndpoints()) != 1 {
			t.Fatalf("endpoints on %s: %v %v", r.cfg.NodeID, eps, err)
		}
		e := eps.GetEndpoints()[0]
		m := e.GetMeta()
		if m.GetUpdatedBy() != syncerA.String() {
			t.Fatalf("endpoint on %s updated by %q, want the syncer that called the follower, %q", r.cfg.NodeID, m.GetUpdatedBy(), syncerA)
		}
		if ut := m.GetUpdateTime().AsTime(); ut.Before(before) || ut.After(after) {
			t.Fatalf("endpoint on %s updated at %v, not during the write (%v..%v)", r.cfg.NodeID, ut, before, after)
		}
		if firstEndpoint == nil {
			firstEndpoint = e
		} else if !proto.Equal(e, firstEndpoint) {
			t.Fatalf("replicas disagree about the endpoint:\n%v\n%v", e, firstEndpoint)
		}

		// Watch events carry the same metadata.
		w, err := fedmeshv1.NewWatchServiceClient(node).Watch(ctx, &fedmeshv1.WatchRequest{FromRevision: up.GetRevision() - 1,
			Kinds: []fedmeshv1.ResourceKind{fedmeshv1.ResourceKind_RESOURCE_KIND_ENDPOINT}})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := w.Recv()
		if err != nil || len(ev.GetEvents()) != 1 || !proto.Equal(ev.GetEvents()[0].GetEndpoint().GetMeta(), m) {
			t.Fatalf("watch on %s: %v %v", r.cfg.NodeID, ev, err)
		}

		recs, err := fedmeshv1.NewAuditServiceClient(g.conn(t, r, admin)).ListAuditRecords(ctx, &fedmeshv1.ListAuditRecordsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if firstAudit == nil {
			firstAudit = recs.GetRecords()
		} else if len(recs.GetRecords()) != len(firstAudit) {
			t.Fatalf("replicas hold %d and %d audit records", len(recs.GetRecords()), len(firstAudit))
		} else {
			for i := range firstAudit {
				if !proto.Equal(recs.GetRecords()[i], firstAudit[i]) {
					t.Fatalf("audit record %d differs on %s:\n%v\n%v", i, r.cfg.NodeID, recs.GetRecords()[i], firstAudit[i])
				}
			}
		}
	}
	want := map[uint64]string{up.GetRevision(): syncerA.String(), pol.GetRevision(): admin.String(), up.GetRevision() - 1: admin.String()}
	got := map[uint64]string{}
	for _, r := range firstAudit {
		got[r.GetRevision()] = r.GetPrincipal() + " " + r.GetOperation()
		if p, ok := want[r.GetRevision()]; ok && r.GetPrincipal() != p {
			t.Errorf("audit record of revision %d names %q, want %q", r.GetRevision(), r.GetPrincipal(), p)
		}
	}
	if got[up.GetRevision()] != syncerA.String()+" UpsertEndpoints" || got[pol.GetRevision()] != admin.String()+" ApplyPolicies" {
		t.Fatalf("audit log %v lacks the forwarded writes", got)
	}

	// Filters, and the admin-only rule.
	audit := fedmeshv1.NewAuditServiceClient(g.conn(t, follower, admin))
	only, err := audit.ListAuditRecords(ctx, &fedmeshv1.ListAuditRecordsRequest{Principal: syncerA.String()})
	if err != nil || len(only.GetRecords()) != 1 || only.GetRecords()[0].GetRevision() != up.GetRevision() {
		t.Fatalf("records of the syncer: %v %v", only, err)
	}
	for _, p := range []auth.Principal{syncerA, auth.Node("a", "n1")} {
		_, err := fedmeshv1.NewAuditServiceClient(g.conn(t, follower, p)).ListAuditRecords(ctx, &fedmeshv1.ListAuditRecordsRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s reads the audit log: %v, want PermissionDenied", p, err)
		}
	}
}

// The time of a write is the leader's, whatever the replica that encoded
// it put there: a command forwarded with a time from 1970 commits with the
// leader's clock.
func TestTheLeaderChoosesTheTimeOfAForwardedWrite(t *testing.T) {
	g := startTLSGroup(t, 1)
	lead := g.leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	data, err := store.Command{Type: store.CmdRegisterCluster, Time: 1, Audited: true, Principal: auth.Admin().String(),
		Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// A fellow replica forwards over ProposeStream.
	s, err := fedmeshv1.NewControlPlaneServiceClient(g.conn(t, lead, auth.Replica("r9"))).ProposeStream(metadata.AppendToOutgoingContext(ctx, forwardedKey, "r9"))
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := s.Send(&fedmeshv1.ProposeStreamRequest{Id: 1, Commands: [][]byte{data}}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil || len(resp.GetResults()) != 1 || len(resp.GetResults()[0].GetStatus()) > 0 {
		t.Fatalf("forwarded write: %v %v", resp, err)
	}
	var c *fedmeshv1.Cluster
	lead.FSM().View(func(st *store.State) { c = st.Cluster("a") })
	if ut := c.GetMeta().GetUpdateTime().AsTime(); ut.Before(before) || ut.After(time.Now()) {
		t.Fatalf("write committed with time %v, not the leader's clock at the write (from %v)", ut, before)
	}
	if c.GetMeta().GetUpdatedBy() != auth.Admin().String() {
		t.Fatalf("updated by %q: the leader must keep the forwarding replica's record of its caller", c.GetMeta().GetUpdatedBy())
	}
}
