package flowstore

import "github.com/prometheus/client_golang/prometheus"

// Collectors export the store's counters (read at scrape time from
// Status, so the store keeps one set of counters).
func (s *Store) Collectors() []prometheus.Collector {
	stat := func(f func(Stats) uint64) func() float64 {
		return func() float64 { return float64(f(s.Status())) }
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedmesh_flows_stored", Help: "Flows held in this replica's flow store."},
			stat(func(st Stats) uint64 { return st.Stored })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedmesh_flows_bytes_per_flow", Help: "Estimated memory per stored flow (records and chunk slack; interned workloads not included)."},
			stat(func(st Stats) uint64 { return st.BytesPerFlow })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "fedmesh_flows_evicted_total", Help: "Flows evicted from the flow store for room (per-node fair share, capacity) or age."},
			stat(func(st Stats) uint64 { return st.Evicted })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "fedmesh_flows_dropped_rate_total", Help: "Flows refused because their node shipped faster than its rate."},
			stat(func(st Stats) uint64 { return st.DroppedRate })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "fedmesh_flows_dropped_agent_total", Help: "Flows the agents reported lost before shipping (ring buffer overrun, shipping backpressure)."},
			stat(func(st Stats) uint64 { return st.DroppedAgent })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "fedmesh_flows_dropped_follow_total", Help: "Flows not sent to followers that read too slowly."},
			stat(func(st Stats) uint64 { return st.DroppedFollow })),
	}
}
