package store

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func benchEndpoint(k int) *fedmeshv1.Endpoint { return benchEndpointSets(k, 50) }

// benchEndpointSets is endpoint k, about 1 KiB, with one of `sets` label sets.
func benchEndpointSets(k, sets int) *fedmeshv1.Endpoint {
	labels := map[string]string{"app": fmt.Sprintf("app%d", k%sets)}
	for i := range 12 {
		labels[fmt.Sprintf("example.com/pad%02d", i)] = strings.Repeat("x", 55)
	}
	return &fedmeshv1.Endpoint{Namespace: "bench", Name: fmt.Sprintf("p%d", k),
		Ips: []string{fmt.Sprintf("10.%d.%d.%d", k>>16&255, k>>8&255, k&255)}, Labels: labels, Node: "n1"}
}

func benchState(b testing.TB) *State {
	s := NewState(DefaultEventLogSize)
	if r := s.Apply(Command{Type: CmdRegisterCluster, Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.0.0.0/8"}}}}); r.Err != nil {
		b.Fatal(r.Err)
	}
	return s
}

// BenchmarkApplyEndpointBatch is the FSM's cost of one committed batch of
// 100 1 KiB endpoints (decode + apply), paid on every replica: as log
// format 1 wrote it, and with the audit header of format 2 (principal and
// time recorded on every endpoint, and an audit record).
func BenchmarkApplyEndpointBatch(b *testing.B) {
	for _, audited := range []bool{false, true} {
		name := "format1"
		if audited {
			name = "format2-audited"
		}
		b.Run(name, func(b *testing.B) {
			s := benchState(b)
			var entries [][]byte
			for i := range 100 {
				req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east"}
				for j := range 100 {
					req.Endpoints = append(req.Endpoints, benchEndpoint(i*100+j))
				}
				c := Command{Type: CmdUpsertEndpoints, Payload: req}
				if audited {
					c.Audited, c.Principal = true, "spiffe://fedmesh/cluster/east/syncer"
				}
				entries = append(entries, mustEncode(b, c))
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, err := DecodeCommand(entries[i%len(entries)])
				if err != nil {
					b.Fatal(err)
				}
				if r := s.Apply(c); r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		})
	}
}

// BenchmarkEdgeValidateEndpointBatch is the edge validation of the same
// batch (once, on the replica that receives the request).
func BenchmarkEdgeValidateEndpointBatch(b *testing.B) {
	req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east"}
	for j := range 100 {
		req.Endpoints = append(req.Endpoints, benchEndpoint(j))
	}
	for i := 0; i < b.N; i++ {
		if err := model.ValidateUpsertEndpoints(req, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryPer100kEndpoints reports the heap the FSM holds for 100k
// 1 KiB endpoints (objects, indexes, identities and their events in the
// event log at its default size), with labels shared by pods of a workload
// (1,000 label sets) and, as the worst case, a distinct label set per pod;
// "syncer" endpoints carry what fedmesh-syncer sends (namespace labels,
// pods spread over 20 namespaces and 50 nodes). Each case is measured as
// the log built it and again as a replica restarting from its snapshot
// holds it (no events then); B/endpoint-frozen is what a snapshot being
// written holds on top. B/endpoint is the figure test/scale/README.md
// reports.
func BenchmarkMemoryPer100kEndpoints(b *testing.B) {
	for _, tc := range []struct {
		sets, batch int
		syncer      bool
	}{{1000, 1000, false}, {100_000, 1000, false}, {1000, 1, false}, {1000, 500, true}} {
		name := fmt.Sprintf("labelsets=%d/batch=%d", tc.sets, tc.batch)
		if tc.syncer {
			name += "/syncer"
		}
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				s, built := measureHeap(func() *State {
					s := benchState(b)
					for k := 0; k < 100_000; k += tc.batch {
						req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east"}
						for j := range tc.batch {
							e := benchEndpointSets(k+j, tc.sets)
							if tc.syncer {
								e.Namespace, e.Node = fmt.Sprintf("ns%d", (k+j)%20), fmt.Sprintf("node%d", (k+j)%50)
								e.NamespaceLabels = map[string]string{"kubernetes.io/metadata.name": e.Namespace, "team": "t"}
							}
							req.Endpoints = append(req.Endpoints, e)
						}
						// Through the log's bytes, as a follower applies them.
						data, err := Command{Type: CmdUpsertEndpoints, Payload: req}.Encode()
						if err != nil {
							b.Fatal(err)
						}
						c, err := DecodeCommand(data)
						if err != nil {
							b.Fatal(err)
						}
						if r := s.Apply(c); r.Err != nil {
							b.Fatal(r.Err)
						}
					}
					return s
				})
				if s.EndpointCount() != 100_000 {
					b.Fatalf("%d endpoints", s.EndpointCount())
				}
				// What a snapshot holds while it is written.
				var fr Frozen
				_, frozen := measureHeap(func() *State { fr = s.Freeze(); return nil })
				runtime.KeepAlive(s) // the state lives on beside its snapshot
				var snap bytes.Buffer
				if _, err := fr.WriteTo(&snap); err != nil {
					b.Fatal(err)
				}
				s = nil
				r, restored := measureHeap(func() *State {
					r, err := ReadSnapshot(bytes.NewReader(snap.Bytes()), DefaultEventLogSize)
					if err != nil {
						b.Fatal(err)
					}
					return r
				})
				if r.EndpointCount() != 100_000 {
					b.Fatalf("restored %d endpoints", r.EndpointCount())
				}
				b.ReportMetric(built/(1<<20), "MiB/100k-endpoints")
				b.ReportMetric(built/100_000, "B/endpoint")
				b.ReportMetric(restored/100_000, "B/endpoint-restored")
				b.ReportMetric(frozen/100_000, "B/endpoint-frozen")
				b.ReportMetric(float64(snap.Len())/100_000, "snapshot-B/endpoint")
				if i == 0 {
					fmt.Printf("FSM memory for 100k endpoints (1 KiB each, %d label sets, %d per write, syncer fields %v, event log %d): %.0f MiB (target < 200 MiB), %.0f B/endpoint; restored from its snapshot: %.0f B/endpoint\n",
						tc.sets, tc.batch, tc.syncer, DefaultEventLogSize, built/(1<<20), built/100_000, restored/100_000)
				}
			}
		})
	}
}

// measureHeap returns what build returns and the live heap it added.
func measureHeap(build func() *State) (*State, float64) {
	// Twice: the second collection frees what sync.Pools kept from the
	// first (their victim caches).
	runtime.GC()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s := build()
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	return s, float64(int64(after.HeapAlloc) - int64(before.HeapAlloc))
}

// BenchmarkLeaderApplyEndpointBatch is the FSM's cost of one committed
// batch of 100 1 KiB endpoints through raft's FSM interface: on a follower
// (decode the bytes) and on the leader that registered the payload it
// decoded itself (Predecoded: checksum and map lookup instead of a decode).
func BenchmarkLeaderApplyEndpointBatch(b *testing.B) {
	for _, leader := range []bool{false, true} {
		name := "follower-decodes"
		if leader {
			name = "leader-predecoded"
		}
		b.Run(name, func(b *testing.B) {
			f := NewFSM()
			f.ApplyBatch([]*raft.Log{{Index: 1, Type: raft.LogCommand, Data: mustEncode(b, Command{Type: CmdRegisterCluster,
				Payload: &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "east", PodCidrs: []string{"10.0.0.0/8"}}}})}})
			type prepared struct {
				data []byte
				c    Command
			}
			// Writes are prepared outside the timer, as the handler does
			// before proposing: encode, and on the leader keep the decoded
			// command.
			prep := func(i int) prepared {
				req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east"}
				for j := range 100 {
					req.Endpoints = append(req.Endpoints, benchEndpoint((i*100+j)%100_000))
				}
				c := Command{Type: CmdUpsertEndpoints, Payload: req}
				data := mustEncode(b, c)
				if !leader {
					return prepared{data: data}
				}
				d, err := DecodeCommand(data)
				if err != nil {
					b.Fatal(err)
				}
				return prepared{data: data, c: d}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				p := prep(i)
				b.StartTimer()
				if leader {
					f.Predecoded().Put(p.data, p.c)
				}
				r := f.Apply(&raft.Log{Index: uint64(i + 2), Type: raft.LogCommand, Data: p.data}).(*Result)
				if leader {
					f.Predecoded().Forget(p.data)
				}
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		})
	}
}

func mustEncode(b *testing.B, c Command) []byte {
	b.Helper()
	data, err := c.Encode()
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkPredecodedVersusDecode compares what the leader pays to find a
// payload it registered (Put, then the FSM's take: two checksums of the
// payload bytes and two map operations) with the decode it spares, for a
// batch of 100 1 KiB endpoints.
func BenchmarkPredecodedVersusDecode(b *testing.B) {
	req := &fedmeshv1.UpsertEndpointsRequest{Cluster: "east"}
	for j := range 100 {
		req.Endpoints = append(req.Endpoints, benchEndpoint(j))
	}
	c := Command{Type: CmdUpsertEndpoints, Payload: req}
	data := mustEncode(b, c)
	b.Run("decode", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := DecodeCommand(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("predecoded", func(b *testing.B) {
		p := newPredecoded()
		for i := 0; i < b.N; i++ {
			p.Put(data, c)
			_, off, err := decodeHeader(data)
			if err != nil {
				b.Fatal(err)
			}
			if _, ok := p.take(data, c.Type, off); !ok {
				b.Fatal("not found")
			}
		}
	})
}
