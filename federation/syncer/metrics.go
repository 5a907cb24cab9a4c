package syncer

import "github.com/prometheus/client_golang/prometheus"

// metrics of one syncer; registered with Config.Registerer when set.
type metrics struct {
	skipped    *prometheus.CounterVec
	batches    *prometheus.CounterVec
	resyncs    prometheus.Counter
	sendErrors prometheus.Counter
	imports    prometheus.Gauge
	// heartbeatErrors counts failed liveness heartbeats.
	heartbeatErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedmesh_syncer_skipped_total",
			Help: "Cluster objects not published to the federation, by kind and reason (see the object's Events).",
		}, []string{"kind", "reason"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedmesh_syncer_batches_total",
			Help: "Batched writes committed by the control plane, by kind and operation.",
		}, []string{"kind", "op"}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedmesh_syncer_resyncs_total",
			Help: "Completed full resyncs (at start and after every failed write).",
		}),
		sendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedmesh_syncer_send_errors_total",
			Help: "Failed writes to the control plane.",
		}),
		imports: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fedmesh_syncer_imports",
			Help: "ServiceImports this syncer maintains in the cluster.",
		}),
		heartbeatErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedmesh_syncer_heartbeat_errors_total",
			Help: "Liveness heartbeats the control plane did not answer; while they fail the federation withdraws this cluster's service backends after its cluster timeout.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.skipped, m.batches, m.resyncs, m.sendErrors, m.imports, m.heartbeatErrors)
	}
	return m
}
