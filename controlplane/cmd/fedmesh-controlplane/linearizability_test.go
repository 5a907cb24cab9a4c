package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/server"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The history is a set of registers, one per key: a write stores a cluster
// whose label "v" holds the value; a read is a linearizable GetCluster.
type regInput struct {
	write bool
	key   int
	value string
}

type regOutput struct {
	value   string
	unknown bool // a write whose outcome the client never learned
}

var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[int][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(regInput).key
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range by {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in, out := input.(regInput), output.(regOutput)
		if in.write {
			return true, in.value
		}
		return out.value == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		if in.write {
			return fmt.Sprintf("put(k%d, %q) unknown=%v", in.key, in.value, out.unknown)
		}
		return fmt.Sprintf("get(k%d) -> %q", in.key, out.value)
	},
}

func keyCluster(k int, v string) *fedmeshv1.Cluster {
	return &fedmeshv1.Cluster{Name: fmt.Sprintf("k%d", k), PodCidrs: []string{fmt.Sprintf("10.%d.0.0/16", 100+k)}, Labels: map[string]string{"v": v}}
}

func TestHistoryIsLinearizableAcrossLeaderKillsAndAPartition(t *testing.T) {
	g := startGroup(t, 3, "--fault-injection")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const clients, keys = 8, 4
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }

	var mu sync.Mutex
	var history []porcupine.Operation
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 42))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				r := g.reps[(c+n)%len(g.reps)]
				in := regInput{write: rng.IntN(2) == 0, key: rng.IntN(keys), value: fmt.Sprintf("c%d-%d", c, n)}
				cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
				call := now()
				var out regOutput
				var err error
				if in.write {
					_, err = fedmeshv1.NewClusterServiceClient(r.conn).RegisterCluster(cctx, &fedmeshv1.RegisterClusterRequest{Cluster: keyCluster(in.key, in.value)})
				} else {
					lin := metadata.AppendToOutgoingContext(cctx, server.ConsistencyKey, server.ConsistencyLinearizable)
					var resp *fedmeshv1.GetClusterResponse
					resp, err = fedmeshv1.NewClusterServiceClient(r.conn).GetCluster(lin, &fedmeshv1.GetClusterRequest{Name: fmt.Sprintf("k%d", in.key)})
					if status.Code(err) == codes.NotFound {
						err = nil
					}
					out.value = resp.GetCluster().GetLabels()["v"]
				}
				ret := now()
				ccancel()
				if err != nil {
					if !retryable(err) {
						t.Errorf("client %d: %v", c, err)
						return
					}
					if !in.write {
						time.Sleep(50 * time.Millisecond)
						continue // a failed read has no effect
					}
					// The write may or may not have happened, at any time
					// after its call.
					out.unknown = true
					ret = math.MaxInt64
					time.Sleep(100 * time.Millisecond)
				}
				mu.Lock()
				history = append(history, porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret})
				mu.Unlock()
			}
		}(c)
	}

	// Faults: kill the leader twice (restarting it), then cut a follower off.
	time.Sleep(1 * time.Second)
	for round := range 2 {
		lead := g.leader(15 * time.Second)
		g.kill(lead)
		t.Logf("round %d: killed leader %s", round, lead.id)
		time.Sleep(1500 * time.Millisecond)
		g.start(lead)
		time.Sleep(1 * time.Second)
	}
	lead := g.leader(15 * time.Second)
	cut := g.followers(lead)[0]
	g.signal(cut, syscall.SIGUSR1)
	t.Logf("isolated %s", cut.id)
	time.Sleep(2 * time.Second)
	g.signal(cut, syscall.SIGUSR2)
	time.Sleep(1 * time.Second)
	close(stop)
	wg.Wait()

	var writes, reads, unknown int
	for _, op := range history {
		if op.Input.(regInput).write {
			writes++
			if op.Output.(regOutput).unknown {
				unknown++
			}
		} else {
			reads++
		}
	}
	t.Logf("history: %d writes (%d unknown outcome), %d reads", writes, unknown, reads)
	if reads < 50 || writes < 50 {
		t.Fatalf("too little history to judge: %d writes, %d reads", writes, reads)
	}
	res := porcupine.CheckOperationsTimeout(registerModel, history, 2*time.Minute)
	if res != porcupine.Ok {
		t.Fatalf("linearizability check: %s", res)
	}
}

func TestRegisterModelRejectsAStaleRead(t *testing.T) {
	// put(1) completes, then a read returns the older value: not
	// linearizable. Guards the checker against a model that accepts all.
	history := []porcupine.Operation{
		{ClientId: 0, Input: regInput{write: true, value: "a"}, Call: 0, Output: regOutput{}, Return: 10},
		{ClientId: 0, Input: regInput{write: true, value: "b"}, Call: 20, Output: regOutput{}, Return: 30},
		{ClientId: 1, Input: regInput{}, Call: 40, Output: regOutput{value: "a"}, Return: 50},
	}
	if porcupine.CheckOperations(registerModel, history) {
		t.Fatal("stale read judged linearizable")
	}
	history[2].Output = regOutput{value: "b"}
	if !porcupine.CheckOperations(registerModel, history) {
		t.Fatal("fresh read judged not linearizable")
	}
}
