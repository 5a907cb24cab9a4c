package inproc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func register(ctx context.Context, cc grpc.ClientConnInterface, name, cidr string) (uint64, error) {
	resp, err := fedmeshv1.NewClusterServiceClient(cc).RegisterCluster(ctx,
		&fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: name, PodCidrs: []string{cidr}}})
	return resp.GetRevision(), err
}

func mustRegister(t *testing.T, r *inproc.Replica, name, cidr string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rev, err := register(ctx, r.Conn(), name, cidr)
	if err != nil {
		t.Fatalf("register cluster %s through %s: %v", name, r.ID, err)
	}
	return rev
}

// clusters lists the clusters replica r holds, read locally on r.
func clusters(t *testing.T, r *inproc.Replica) []string {
	t.Helper()
	var names []string
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := fedmeshv1.NewClusterServiceClient(r.Conn()).ListClusters(ctx, &fedmeshv1.ListClustersRequest{})
	if err != nil {
		t.Fatalf("list clusters on %s: %v", r.ID, err)
	}
	for _, c := range resp.GetClusters() {
		names = append(names, c.GetName())
	}
	slices.Sort(names)
	return names
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A leader cut off from both followers loses its leadership; the majority
// elects another and commits; the write the old leader took while cut off
// never commits; after the heal every replica holds the same state.
func TestPartitionedLeaderIsReplacedAndTheGroupConvergesAfterHeal(t *testing.T) {
	c := inproc.Start(t, inproc.Options{})
	old := c.Leader()
	rev := mustRegister(t, old, "east", "10.1.0.0/16")
	if err := c.WaitRevision(rev, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	c.Isolate(old)
	// Sent at once, while old may still believe it leads: it cannot reach
	// a quorum, so the write must fail and must never commit.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, err := register(ctx, old.Conn(), "lost", "10.9.0.0/16")
	cancel()
	if err == nil {
		t.Fatalf("a write through the isolated leader %s succeeded", old.ID)
	}
	next := c.Leader()
	if next == old {
		t.Fatalf("the isolated replica %s is still the agreed leader", old.ID)
	}
	eventually(t, "the isolated replica steps down", func() error {
		if st := old.Server().Raft().State().String(); st == "Leader" {
			return fmt.Errorf("%s is %s", old.ID, st)
		}
		return nil
	})
	rev = mustRegister(t, c.Followers(old)[0], "west", "10.2.0.0/16")
	if err := c.WaitRevision(rev, 10*time.Second, c.Followers(old)...); err != nil {
		t.Fatalf("the majority did not commit without the isolated replica: %v", err)
	}
	if got := old.Server().FSM().Revision(); got >= rev {
		t.Fatalf("the isolated replica applied revision %d, want < %d (it is cut off)", got, rev)
	}
	if n := c.Net.Lost(old.ID, next.ID) + c.Net.Lost(next.ID, old.ID); n == 0 {
		t.Error("the network lost no message between the isolated replica and the new leader")
	}

	c.Heal()
	lead := c.Leader()
	if err := c.WaitRevision(rev, 10*time.Second); err != nil {
		t.Fatalf("after the heal: %v", err)
	}
	for _, r := range c.Replicas {
		if st, err := r.Status(context.Background()); err != nil || st.GetLeaderId() != lead.ID {
			t.Errorf("replica %s names leader %q (%v), want %s", r.ID, st.GetLeaderId(), err, lead.ID)
		}
		if got := clusters(t, r); !slices.Equal(got, []string{"east", "west"}) {
			t.Errorf("replica %s holds clusters %v, want [east west] (the isolated leader's write must be gone)", r.ID, got)
		}
	}
}

// One-way cuts: a follower whose messages to the leader are lost still
// receives and applies the log and does not disturb the leader; a follower
// that cannot hear the leader falls behind but, with pre-vote, cannot
// depose it either, and catches up after the heal.
func TestOneWayCutsKeepTheLeaderAndLoseOnlyOneDirection(t *testing.T) {
	c := inproc.Start(t, inproc.Options{})
	lead := c.Leader()
	term := lead.Server().Raft().CurrentTerm()
	f, g := c.Followers(lead)[0], c.Followers(lead)[1]

	t.Run("follower cannot answer", func(t *testing.T) {
		c.Net.Cut(f.ID, lead.ID)
		defer c.Heal()
		rev := mustRegister(t, lead, "east", "10.1.0.0/16")
		if err := c.WaitRevision(rev, 10*time.Second); err != nil {
			t.Fatalf("the follower whose answers are lost must still apply the log: %v", err)
		}
		if c.Net.Lost(f.ID, lead.ID) == 0 {
			t.Error("no answer of the follower was lost")
		}
		if c.Net.Lost(lead.ID, f.ID) != 0 {
			t.Error("the leader's messages to the follower were lost on a one-way cut the other way")
		}
	})

	t.Run("follower cannot hear the leader", func(t *testing.T) {
		c.Net.Cut(lead.ID, f.ID)
		rev := mustRegister(t, lead, "west", "10.2.0.0/16")
		if err := c.WaitRevision(rev, 10*time.Second, lead, g); err != nil {
			t.Fatal(err)
		}
		// Several election timeouts: f would have started elections.
		time.Sleep(2 * time.Second)
		if got := f.Server().FSM().Revision(); got >= rev {
			t.Errorf("the follower that cannot hear the leader is at %d, want < %d", got, rev)
		}
		if now := c.Leader(); now != lead || lead.Server().Raft().CurrentTerm() != term {
			t.Errorf("leader %s term %d, want %s still leading term %d: the deaf follower deposed it",
				now.ID, lead.Server().Raft().CurrentTerm(), lead.ID, term)
		}
		c.Heal()
		if err := c.WaitRevision(rev, 10*time.Second); err != nil {
			t.Fatalf("after the heal: %v", err)
		}
	})
}

// Under message loss and delay on every link the group still commits every
// acknowledged write, and converges once the network heals.
func TestLossyNetworkStillCommitsAndConverges(t *testing.T) {
	c := inproc.Start(t, inproc.Options{})
	ids := c.IDs()
	for _, a := range ids {
		for _, b := range ids {
			if a != b {
				c.Net.Drop(a, b, 0.2)
				c.Net.Delay(a, b, 5*time.Millisecond)
			}
		}
	}
	var want []string
	var rev uint64
	for i := range 10 {
		name := fmt.Sprintf("c%d", i)
		eventually(t, "write "+name, func() error {
			r, err := c.Any()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			got, err := register(ctx, r.Conn(), name, fmt.Sprintf("10.%d.0.0/16", i))
			if err == nil {
				rev = max(rev, got)
			}
			return err
		})
		want = append(want, name)
	}
	lost := 0
	for _, a := range ids {
		for _, b := range ids {
			lost += c.Net.Lost(a, b)
		}
	}
	if lost == 0 {
		t.Error("a 20% lossy network lost no message")
	}
	c.Heal()
	c.Leader()
	if err := c.WaitRevision(rev, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Replicas {
		if got := clusters(t, r); !slices.Equal(got, want) {
			t.Errorf("replica %s holds %v, want %v", r.ID, got, want)
		}
	}
}

// A stopped replica keeps its data dir and addresses and catches up after
// a restart in the same process.
func TestStoppedReplicaRestartsFromDiskAndCatchesUp(t *testing.T) {
	c := inproc.Start(t, inproc.Options{})
	lead := c.Leader()
	f := c.Followers(lead)[0]
	mustRegister(t, lead, "east", "10.1.0.0/16")
	c.Stop(f)
	if f.Alive() {
		t.Fatal("stopped replica reports alive")
	}
	rev := mustRegister(t, lead, "west", "10.2.0.0/16")
	c.Restart(f)
	if err := c.WaitRevision(rev, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := clusters(t, f); !slices.Equal(got, []string{"east", "west"}) {
		t.Errorf("restarted replica holds %v", got)
	}
	c.StopAll()
	if _, err := c.Any(); !errors.Is(err, inproc.ErrNoReplica) {
		t.Fatalf("Any after StopAll: %v, want ErrNoReplica", err)
	}
	c.RestartAll()
	if err := c.WaitRevision(rev, 20*time.Second); err != nil {
		t.Fatalf("after a full restart: %v", err)
	}
}

func faultyConn(t *testing.T, addr string, f *inproc.Faults) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, append(f.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestFaultsFailDelayAndLoseAnswers(t *testing.T) {
	c := inproc.Start(t, inproc.Options{})
	lead := c.Leader()
	f := inproc.NewFaults()
	cc := faultyConn(t, lead.GRPCAddr, f)
	other := faultyConn(t, c.Followers(lead)[0].GRPCAddr, f)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	method := fedmeshv1.ClusterService_RegisterCluster_FullMethodName

	t.Run("the next calls fail and nothing commits", func(t *testing.T) {
		f.Inject(inproc.Rule{Method: method, Code: codes.Unavailable, Times: 2})
		for i := range 2 {
			if _, err := register(ctx, cc, "east", "10.1.0.0/16"); status.Code(err) != codes.Unavailable {
				t.Fatalf("call %d: %v, want Unavailable", i, err)
			}
		}
		if got := clusters(t, lead); len(got) != 0 {
			t.Fatalf("failed calls committed %v", got)
		}
		if _, err := register(ctx, cc, "east", "10.1.0.0/16"); err != nil {
			t.Fatalf("third call: %v, want it through", err)
		}
		if n := f.Calls(method); n != 3 {
			t.Errorf("%d calls counted, want 3", n)
		}
	})
	t.Run("a lost answer: the write commits, the client sees it fail", func(t *testing.T) {
		remove := f.Inject(inproc.Rule{Method: method, Code: codes.DeadlineExceeded, LoseAnswer: true})
		_, err := register(ctx, cc, "west", "10.2.0.0/16")
		remove()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("register: %v, want DeadlineExceeded", err)
		}
		if got := clusters(t, lead); !slices.Contains(got, "west") {
			t.Fatalf("the write whose answer was lost did not commit: %v", got)
		}
	})
	t.Run("a rule for one replica spares the others", func(t *testing.T) {
		remove := f.Inject(inproc.Rule{Target: lead.GRPCAddr, Code: codes.Unavailable})
		defer remove()
		if _, err := register(ctx, cc, "north", "10.3.0.0/16"); status.Code(err) != codes.Unavailable {
			t.Errorf("through the targeted replica: %v, want Unavailable", err)
		}
		if _, err := register(ctx, other, "north", "10.3.0.0/16"); err != nil {
			t.Errorf("through another replica: %v", err)
		}
	})
	t.Run("a delay holds the call", func(t *testing.T) {
		remove := f.Inject(inproc.Rule{Method: method, Delay: 300 * time.Millisecond})
		defer remove()
		start := time.Now()
		if _, err := register(ctx, cc, "south", "10.4.0.0/16"); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Errorf("delayed call returned after %s, want >= 300ms", took)
		}
	})
}

func TestFaultsBreakAndRefuseWatches(t *testing.T) {
	c := inproc.Start(t, inproc.Options{})
	lead := c.Leader()
	f := inproc.NewFaults()
	cc := faultyConn(t, lead.GRPCAddr, f)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	watch := func() (grpc.ServerStreamingClient[fedmeshv1.WatchResponse], error) {
		return fedmeshv1.NewWatchServiceClient(cc).Watch(ctx, &fedmeshv1.WatchRequest{})
	}
	w, err := watch()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil { // the initial snapshot
		t.Fatal(err)
	}
	if n := f.OpenStreams(fedmeshv1.WatchService_Watch_FullMethodName); n != 1 {
		t.Fatalf("%d open watch streams, want 1", n)
	}
	heal := f.Unreachable()
	if _, err := w.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("Recv on a broken stream: %v, want Unavailable", err)
	}
	if _, err := watch(); status.Code(err) != codes.Unavailable {
		t.Fatalf("a new watch while unreachable: %v, want Unavailable", err)
	}
	if n := f.OpenStreams(""); n != 0 {
		t.Errorf("%d streams still open after the break", n)
	}
	heal()
	w, err = watch()
	if err != nil {
		t.Fatalf("watch after heal: %v", err)
	}
	if _, err := w.Recv(); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("watch after heal: %v", err)
	}
}
