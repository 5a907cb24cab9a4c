package cptest_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func TestMain(m *testing.M) { os.Exit(cptest.Main(m)) }

func register(ctx context.Context, t *testing.T, r *cptest.Replica, name, cidr string) uint64 {
	t.Helper()
	resp, err := fedmeshv1.NewClusterServiceClient(r.Conn()).RegisterCluster(ctx,
		&fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: name, PodCidrs: []string{cidr}}})
	if err != nil {
		t.Fatalf("register cluster %s through %s: %v", name, r.ID, err)
	}
	return resp.GetRevision()
}

// The harness gives a working group: writes through a follower commit on
// every replica, a killed leader is replaced, and a restarted replica
// catches up from its data dir.
func TestClusterElectsReplicatesAndSurvivesALeaderKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := cptest.Start(t, cptest.Options{Metrics: true})
	if n := len(c.Addrs()); n != 3 {
		t.Fatalf("%d replicas, want 3", n)
	}
	lead := c.Leader()
	rev := register(ctx, t, c.Followers(lead)[0], "east", "10.1.0.0/16")
	if err := c.WaitRevision(rev, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if v, err := lead.Metric(ctx, "fedmesh_controlplane_revision"); err != nil || v < float64(rev) {
		t.Fatalf("leader's revision metric = %v (%v), want >= %d", v, err, rev)
	}

	pid := lead.PID()
	c.Kill(lead)
	if lead.Alive() || lead.PID() != 0 || pid == 0 {
		t.Fatalf("killed leader still alive (pid %d)", pid)
	}
	next := c.Leader()
	if next == lead {
		t.Fatal("the killed replica is still leader")
	}
	rev = register(ctx, t, next, "west", "10.2.0.0/16")

	c.Restart(lead)
	if err := c.WaitRevision(rev, 20*time.Second); err != nil {
		t.Fatalf("restarted replica did not catch up: %v", err)
	}
	if _, err := cptest.Status(ctx, lead); err != nil {
		t.Fatalf("restarted replica does not answer: %v", err)
	}

	// Every replica down, then all back: the state survives on disk.
	c.KillAll()
	if _, err := c.Any(); err == nil {
		t.Fatal("Any found a replica after KillAll")
	}
	c.RestartAll()
	if err := c.WaitRevision(rev, 20*time.Second); err != nil {
		t.Fatalf("after a full restart: %v", err)
	}
}
