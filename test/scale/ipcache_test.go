package scale

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// entries is how many endpoints each measurement holds: enough that fixed
// costs vanish in the per-entry figure, small enough for a shared 2-core
// machine.
const entries = 200_000

// endpoints are fedload-shaped pods of one cluster in 10.0.0.0/8.
func endpoints(n int) (*fedmeshv1.Cluster, []*fedmeshv1.Endpoint) {
	c := &fedmeshv1.Cluster{Name: "c000", PodCidrs: []string{"10.0.0.0/8"}}
	out := make([]*fedmeshv1.Endpoint, n)
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		out[i] = &fedmeshv1.Endpoint{Cluster: c.Name, Namespace: "ns-" + strconv.Itoa(i%5), Name: "pod-" + strconv.Itoa(i),
			Ips: []string{ip.String()}, Labels: map[string]string{"app": "app-" + strconv.Itoa(i%25)}, Node: "n" + strconv.Itoa(i%300),
			Identity: uint32(1000 + i%25)}
	}
	return c, out
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkAgentBytesPerEndpoint measures the Go heap one endpoint of the
// federation costs an agent, by the part that holds it: the immutable
// dataplane ipcache alone, the ipcache index (which also keeps the
// endpoints to judge them), and the view the watch stream feeds (the
// compact endpoints, agent.Endpoint, which the index shares). Compare
// with BenchmarkAgentSync and fedload's "a new agent's initial sync" heap,
// which are all of it plus the policy compiler.
func BenchmarkAgentBytesPerEndpoint(b *testing.B) {
	cluster, eps := endpoints(entries)
	b.Run("dataplane-ipcache", func(b *testing.B) {
		for b.Loop() {
			before := liveHeap()
			bld := dataplane.NewIPCacheBuilder(dataplane.IPCache{})
			for i, ep := range eps {
				bld.Set(netip.PrefixFrom(netip.MustParseAddr(ep.Ips[0]), 32), uint32(1000+i%25))
			}
			c := bld.IPCache()
			b.ReportMetric(float64(liveHeap()-before)/entries, "B/endpoint")
			runtime.KeepAlive(c)
		}
	})
	b.Run("ipcache-index", func(b *testing.B) {
		compact := make([]*agent.Endpoint, len(eps))
		for i, ep := range eps {
			compact[i] = agent.NewEndpoint(ep)
		}
		for b.Loop() {
			before := liveHeap()
			x := agent.NewIPCacheIndex()
			x.UpsertCluster(cluster)
			for _, ep := range compact {
				if bad := x.UpsertEndpoint(ep); len(bad) > 0 {
					b.Fatalf("endpoint %s: %v", ep.Key, bad)
				}
			}
			c, _ := x.IPCache()
			if c.Len() != entries {
				b.Fatalf("ipcache holds %d entries, want %d", c.Len(), entries)
			}
			// The endpoints (the compact form the view holds) belong to
			// the test, not the index: what the index adds is its maps
			// and the ipcache.
			b.ReportMetric(float64(liveHeap()-before)/entries, "B/endpoint")
			runtime.KeepAlive(x)
		}
	})
	b.Run("view", func(b *testing.B) {
		for b.Loop() {
			before := liveHeap()
			v := agent.NewView()
			snap := &fedmeshv1.WatchResponse{Type: fedmeshv1.WatchResponseType_WATCH_RESPONSE_TYPE_SNAPSHOT, Revision: 1,
				Events: []*fedmeshv1.Event{{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Cluster{Cluster: cluster}}}}
			// Decoded from the wire, as the watch stream hands them over:
			// the view then owns the only copy.
			for _, ep := range eps {
				e := &fedmeshv1.Event{Type: fedmeshv1.EventType_EVENT_TYPE_PUT, Object: &fedmeshv1.Event_Endpoint{Endpoint: proto.CloneOf(ep)}}
				snap.Events = append(snap.Events, e)
			}
			if _, _, err := v.Apply(snap); err != nil {
				b.Fatal(err)
			}
			snap = nil
			b.ReportMetric(float64(liveHeap()-before)/entries, "B/endpoint")
			runtime.KeepAlive(v)
		}
	})
}

// BenchmarkKernelIPCacheBytesPerEntry measures what a host ipcache entry
// costs the kernel in the map type the dataplane uses for pod addresses
// (fm_ipcache_host's inner maps: a hash of 16-byte keys and 4-byte values,
// no preallocation), by the kernel's own accounting (fdinfo memlock) at
// two fills, so the fixed bucket array drops out. The dataplane keeps two
// such maps (SLOTS, for atomic flips), so an entry costs the node twice
// this.
func BenchmarkKernelIPCacheBytesPerEntry(b *testing.B) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			b.Fatal("needs root for BPF maps (CI=true: not skipping)")
		}
		b.Skip("needs root for BPF maps")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "scale_iphost", Type: ebpf.Hash, KeySize: 16, ValueSize: 4, MaxEntries: 1 << 20, Flags: 1 /* BPF_F_NO_PREALLOC */})
		if err != nil {
			b.Fatalf("create hash map: %v", err)
		}
		fill := func(from, to int) {
			for i := from; i < to; i++ {
				var k [16]byte
				k[10], k[11] = 0xff, 0xff
				k[12], k[13], k[14], k[15] = 10, byte(i>>16), byte(i>>8), byte(i)
				if err := m.Put(k, uint32(i)); err != nil {
					b.Fatalf("put entry %d: %v", i, err)
				}
			}
		}
		fill(0, entries/2)
		half, err := memlock(m)
		if err != nil {
			b.Fatal(err)
		}
		fill(entries/2, entries)
		full, err := memlock(m)
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
		b.ReportMetric(float64(full-half)/float64(entries/2), "B/entry")
		b.ReportMetric(float64(full-(full-half)*2), "B-fixed")
	}
}

// profileEntries is issue 21's full profile: 200 clusters × 15,000
// endpoints, every one of which an agent holding the whole federation puts
// in its host ipcache; profileMaxEntries is the map size such a node must
// be given (fedmesh-agent --ipcache-max-entries), the power of two above.
const (
	profileEntries    = 3_000_000
	profileMaxEntries = 1 << 22
)

// BenchmarkKernelIPCacheAtProfile fills one host ipcache map (the
// dataplane's inner map type, sized as a node of a 3M-endpoint federation
// must be) with the profile's 3,000,000 entries and reports what the
// kernel accounts for it (fdinfo memlock): the whole map, and per node,
// where the dataplane keeps two such slots.
func BenchmarkKernelIPCacheAtProfile(b *testing.B) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			b.Fatal("needs root for BPF maps (CI=true: not skipping)")
		}
		b.Skip("needs root for BPF maps")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "scale_iphost3m", Type: ebpf.Hash, KeySize: 16, ValueSize: 4, MaxEntries: profileMaxEntries, Flags: 1 /* BPF_F_NO_PREALLOC */})
		if err != nil {
			b.Fatalf("create hash map of %d entries: %v", profileMaxEntries, err)
		}
		empty, err := memlock(m)
		if err != nil {
			b.Fatal(err)
		}
		const batch = 4096
		keys := make([][16]byte, 0, batch)
		vals := make([]uint32, 0, batch)
		flush := func() {
			if n, err := m.BatchUpdate(keys, vals, nil); err != nil || n != len(keys) {
				b.Fatalf("batch update of %d entries: wrote %d: %v", len(keys), n, err)
			}
			keys, vals = keys[:0], vals[:0]
		}
		for i := range profileEntries {
			var k [16]byte
			k[10], k[11] = 0xff, 0xff
			k[12], k[13], k[14], k[15] = 10, byte(i>>16), byte(i>>8), byte(i)
			keys, vals = append(keys, k), append(vals, uint32(i))
			if len(keys) == batch {
				flush()
			}
		}
		if len(keys) > 0 {
			flush()
		}
		full, err := memlock(m)
		if err != nil {
			b.Fatal(err)
		}
		var k [16]byte
		var v uint32
		n := 0
		for it := m.Iterate(); it.Next(&k, &v); {
			n++
		}
		m.Close()
		if n != profileEntries {
			b.Fatalf("map holds %d entries, want %d", n, profileEntries)
		}
		b.ReportMetric(float64(empty)/(1<<20), "MiB-empty")
		b.ReportMetric(float64(full)/(1<<20), "MiB-map")
		b.ReportMetric(2*float64(full)/(1<<20), "MiB-node")
		b.ReportMetric(float64(full-empty)/profileEntries, "B/entry")
	}
}

// memlock reads the kernel's memory accounting of a map.
func memlock(m *ebpf.Map) (uint64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		return 0, fmt.Errorf("read map fdinfo: %w", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "memlock:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("map fdinfo has no memlock line (kernel too old to account map memory)")
}
