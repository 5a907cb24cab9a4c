package inproc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Read replicas (Raft non-voters) serve watches of every write, are listed
// as nonvoters, and never count for quorum: with two of three voters down,
// the one voter and two non-voters left (three of five replicas) elect no
// one, and the non-voters keep serving what they hold.
func TestNonVotersServeWatchesAndNeverCountForQuorum(t *testing.T) {
	c := inproc.Start(t, inproc.Options{Replicas: 3, NonVoters: 2})
	voters, readers := c.Replicas[:3], c.Replicas[3:]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	lead := c.Leader()
	// The read replica learns r5's joining from the log, so it may list
	// the members before that entry reaches it: wait for it to converge.
	want := map[string]bool{"r1": true, "r2": true, "r3": true, "r4": false, "r5": false}
	var suffrage map[string]bool
	for deadline := time.Now().Add(10 * time.Second); ; {
		members, err := fedmeshv1.NewControlPlaneServiceClient(readers[0].Conn()).ListMembers(ctx, &fedmeshv1.ListMembersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		suffrage = map[string]bool{}
		for _, m := range members.GetMembers() {
			suffrage[m.GetId()] = m.GetVoter()
		}
		if fmt.Sprint(suffrage) == fmt.Sprint(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if fmt.Sprint(suffrage) != fmt.Sprint(want) {
		t.Fatalf("members by voter = %v, want %v", suffrage, want)
	}

	w, err := fedmeshv1.NewWatchServiceClient(readers[1].Conn()).Watch(ctx, &fedmeshv1.WatchRequest{Kinds: []fedmeshv1.ResourceKind{fedmeshv1.ResourceKind_RESOURCE_KIND_CLUSTER}})
	if err != nil {
		t.Fatal(err)
	}
	if snap, err := w.Recv(); err != nil || snap.GetType() != fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT {
		t.Fatalf("non-voter watch: first message %v, %v; want a snapshot", snap, err)
	}
	// A write through a read replica is forwarded to the leader and comes
	// back on the read replica's watch.
	rev := mustRegister(t, readers[0], "east", "10.1.0.0/16")
	ev, err := w.Recv()
	if err != nil || ev.GetRevision() != rev || len(ev.GetEvents()) != 1 || ev.GetEvents()[0].GetCluster().GetName() != "east" {
		t.Fatalf("non-voter watch after the write at %d: %v, %v", rev, ev, err)
	}

	for _, r := range voters {
		if r != lead {
			c.Stop(r)
			break
		}
	}
	c.Stop(lead)
	// An observation window, not a wait for a condition: nothing may be
	// elected in it (at least ten election timeouts of 300ms).
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, r := range c.Replicas {
			srv := r.Server()
			if srv == nil {
				continue
			}
			st := srv.Raft().State()
			if st == raft.Leader {
				t.Fatalf("%s leads with two of three voters down (non-voters counted for quorum)", r.ID)
			}
			if r.NonVoter && st == raft.Candidate {
				t.Fatalf("non-voter %s stood for election", r.ID)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := register(wctx, readers[0].Conn(), "west", "10.2.0.0/16"); err == nil {
		t.Fatal("a write committed without a quorum of voters")
	}
	wcancel()
	if got := clusters(t, readers[1]); fmt.Sprint(got) != "[east]" {
		t.Fatalf("non-voter without a quorum serves %v, want what it held ([east])", got)
	}

	for _, r := range voters {
		if !r.Alive() {
			c.Restart(r)
			break
		}
	}
	c.Leader()
	eventually(t, "a write once a voter quorum is back", func() error {
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
		defer wcancel()
		_, err := register(wctx, readers[0].Conn(), "west", "10.2.0.0/16")
		return err
	})
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatalf("non-voter watch after the quorum came back: %v", err)
		}
		if len(ev.GetEvents()) > 0 && ev.GetEvents()[0].GetCluster().GetName() == "west" {
			break
		}
	}
}
