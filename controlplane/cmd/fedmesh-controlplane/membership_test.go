package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func memberIDs(ms []*fedmeshv1.Member) string {
	var ids []string
	for _, m := range ms {
		s := m.GetId()
		if m.GetLeader() {
			s += "*"
		}
		ids = append(ids, s)
	}
	return strings.Join(ids, ",")
}

func TestMembersAreAddedAndRemovedAtRuntime(t *testing.T) {
	g := startGroup(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lead := g.leader(10 * time.Second)
	if _, err := fedmeshv1.NewClusterServiceClient(lead.conn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	follower := g.followers(lead)[0]
	admin := fedmeshv1.NewControlPlaneServiceClient(follower.conn)
	// Replicas publish their gRPC address and log format through the log
	// once they run, so a follower may list a member before they
	// committed: poll. The leader groups writes into one entry only once
	// every replica published the format that applies them.
	deadline := time.Now().Add(15 * time.Second)
	for {
		list, err := admin.ListMembers(ctx, &fedmeshv1.ListMembersRequest{})
		if err != nil || len(list.GetMembers()) != 3 {
			t.Fatalf("list: %v %v", list, err)
		}
		var missing []string
		for _, m := range list.GetMembers() {
			if m.GetGrpcAddress() == "" || !m.GetVoter() || m.GetLogFormat() != store.LogFormat {
				missing = append(missing, m.String())
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members lack their published address, vote or log format: %v", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A fourth replica joins through a follower (forwarded to the leader)
	// and catches up.
	r4 := g.join("r4")
	added, err := admin.AddMember(ctx, &fedmeshv1.AddMemberRequest{Id: r4.id, RaftAddress: r4.raftAddr, GrpcAddress: r4.grpcAddr})
	if err != nil {
		t.Fatalf("add member: %v", err)
	}
	if got := memberIDs(added.GetMembers()); !strings.Contains(got, "r4") {
		t.Fatalf("after add: %s", got)
	}
	g.waitSameRevision(20 * time.Second)
	c, err := fedmeshv1.NewClusterServiceClient(r4.conn).GetCluster(ctx, &fedmeshv1.GetClusterRequest{Name: "east"})
	if err != nil || c.GetCluster().GetName() != "east" {
		t.Fatalf("new member's state: %v %v", c, err)
	}
	// The new member forwards writes too.
	if _, err := fedmeshv1.NewClusterServiceClient(r4.conn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "west", PodCidrs: []string{"10.2.0.0/16"}}}); err != nil {
		t.Fatalf("write via new member: %v", err)
	}

	// Remove one of the originals (not the leader) and check the list.
	victim := g.followers(g.leader(10 * time.Second))[0]
	if victim == r4 {
		victim = g.followers(g.leader(10 * time.Second))[1]
	}
	removed, err := fedmeshv1.NewControlPlaneServiceClient(r4.conn).RemoveMember(ctx, &fedmeshv1.RemoveMemberRequest{Id: victim.id})
	if err != nil {
		t.Fatalf("remove member: %v", err)
	}
	if got := memberIDs(removed.GetMembers()); strings.Contains(got, victim.id) || len(removed.GetMembers()) != 3 {
		t.Fatalf("after removing %s: %s", victim.id, got)
	}
	g.kill(victim)
	// The remaining three still commit.
	if _, err := fedmeshv1.NewClusterServiceClient(r4.conn).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "north", PodCidrs: []string{"10.3.0.0/16"}}}); err != nil {
		t.Fatalf("write after removal: %v", err)
	}
	t.Logf("members now: %s", memberIDs(removed.GetMembers()))
}
