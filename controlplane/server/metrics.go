package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fedmesh/fedmesh/controlplane/store"
)

// metrics are one replica's Prometheus metrics, in a registry of its own.
type metrics struct {
	reg           *prometheus.Registry
	commitLatency prometheus.Histogram
	watchers      prometheus.Gauge
	watchResets   prometheus.Counter
	// watchEvents and watchCoalesced count the events sent to watchers and
	// those left out because a later event of the same object in the same
	// response superseded them (watch.go).
	watchEvents    prometheus.Counter
	watchCoalesced prometheus.Counter
	// snapshotsWaiting counts watchers waiting for a snapshot slot.
	snapshotsWaiting prometheus.Gauge
}

func newMetrics(r *Replica) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fedmesh_controlplane_commit_latency_seconds",
			Help:    "Time from proposing a write on the leader to its commit and apply.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fedmesh_controlplane_watchers",
			Help: "Watch streams open on this replica.",
		}),
		watchResets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedmesh_controlplane_watch_snapshots_total",
			Help: "Snapshots sent to watchers whose revision was compacted from the event log (slow or new watchers).",
		}),
		watchEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedmesh_controlplane_watch_events_sent_total",
			Help: "Events sent to watchers after filtering and coalescing, snapshots not included.",
		}),
		watchCoalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedmesh_controlplane_watch_events_coalesced_total",
			Help: "Events not sent because a later event of the same object reached the same watcher in the same response (a watcher behind by several revisions gets each object's newest state).",
		}),
		snapshotsWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fedmesh_controlplane_watch_snapshots_waiting",
			Help: "Watchers waiting for one of the replica's snapshot slots (Config.MaxConcurrentSnapshots): many watchers (re)connected at once.",
		}),
	}
	m.reg.MustRegister(m.commitLatency, m.watchers, m.watchResets, m.watchEvents, m.watchCoalesced, m.snapshotsWaiting,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fedmesh_controlplane_raft_state",
			Help: "Raft state of this replica: 0 follower, 1 candidate, 2 leader, 3 shutdown.",
		}, func() float64 { return float64(r.raft.State()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fedmesh_controlplane_revision",
			Help: "Store revision of this replica.",
		}, func() float64 { return float64(r.fsm.Revision()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fedmesh_controlplane_raft_applied_index",
			Help: "Last Raft log index applied by this replica.",
		}, func() float64 { return float64(r.fsm.AppliedIndex()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fedmesh_controlplane_events_dropped_total",
			Help: "Events evicted from the bounded event log; watchers behind them get a snapshot.",
		}, func() float64 {
			var n uint64
			r.fsm.View(func(s *store.State) { n = s.Log().Dropped() })
			return float64(n)
		}),
	)
	return m
}
