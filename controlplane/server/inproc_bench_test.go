package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/controlplane/cptest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// BenchmarkInProcessWrites runs three replicas in this process, so a CPU
// profile (-cpuprofile) shows where a committed batch's time goes.
func BenchmarkInProcessWrites(b *testing.B) {
	var peers []Peer
	addrs := cptest.FreeAddrs(b, 6)
	for i := range 3 {
		peers = append(peers, Peer{ID: fmt.Sprintf("r%d", i), RaftAddr: addrs[2*i], GRPCAddr: addrs[2*i+1]})
	}
	var reps []*Replica
	for _, p := range peers {
		r, err := Start(Config{Insecure: true, NodeID: p.ID, DataDir: b.TempDir(), RaftAddr: p.RaftAddr, GRPCAddr: p.GRPCAddr, BootstrapPeers: peers,
			RaftTimeout: 300 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(r.Stop)
		reps = append(reps, r)
	}
	var clients []*client
	for _, r := range reps {
		clients = append(clients, dial(b, r.GRPCAddr()))
	}
	ctx := context.Background()
	for {
		if _, err := clients[0].cluster.RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.0.0.0/8"}}}); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	ep := func(k int) *fedmeshv1.Endpoint {
		labels := map[string]string{"app": fmt.Sprintf("app%d", k%50)}
		for i := range 12 {
			labels[fmt.Sprintf("example.com/pad%02d", i)] = strings.Repeat("x", 55)
		}
		return &fedmeshv1.Endpoint{Namespace: "bench", Name: fmt.Sprintf("p%d", k), Ips: []string{fmt.Sprintf("10.%d.%d.%d", k>>16&255, k>>8&255, k&255)}, Labels: labels, Node: "n1"}
	}
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { inProcessWrites(b, clients, batch, ep) })
	}
}

func inProcessWrites(b *testing.B, clients []*client, batch int, ep func(int) *fedmeshv1.Endpoint) {
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range 32 {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east"}
				for j := range batch {
					req.Endpoints = append(req.Endpoints, ep((i*batch+j)%100000))
				}
				if _, err := clients[w%3].endpoint.UpsertEndpoints(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
}
