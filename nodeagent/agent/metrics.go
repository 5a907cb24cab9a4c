package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's Prometheus series, registered on the registry
// the caller injects (the binary serves it on /metrics).
type metrics struct {
	enforcedRevision prometheus.Gauge
	seenRevision     prometheus.Gauge
	ready            prometheus.Gauge
	connected        prometheus.Gauge
	badInput         *prometheus.CounterVec
	applies          *prometheus.CounterVec
	applySeconds     prometheus.Histogram
	messages         prometheus.Counter
	coalesced        prometheus.Counter
	reconnects       prometheus.Counter
	resyncs          prometheus.Counter
	localEndpoints   prometheus.Gauge
	attached         prometheus.Gauge
	ipcacheEntries   prometheus.Gauge
	reports          *prometheus.CounterVec
	portErrors       *prometheus.CounterVec
	// Services.
	serviceFrontends  prometheus.Gauge
	failovers         prometheus.Counter
	failedOver        prometheus.Gauge
	withdrawnClusters prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		enforcedRevision: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_enforced_revision",
			Help: "Control-plane revision the dataplane enforces."}),
		seenRevision: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_seen_revision",
			Help: "Newest control-plane revision the agent has seen."}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_ready",
			Help: "1 when the node enforces a revision no older than the readiness lag behind the newest seen."}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_controlplane_connected",
			Help: "1 while a watch stream to a control-plane replica is open."}),
		badInput: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_bad_input_total",
			Help: "Objects or messages from the watch stream the agent skipped, by reason."}, []string{"reason"}),
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_dataplane_applies_total",
			Help: "Revisions handed to the dataplane, by result."}, []string{"result"}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedmesh_agent_revision_apply_seconds",
			Help:    "Time from taking a batch of watch messages to the dataplane enforcing its revision.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedmesh_agent_watch_messages_total",
			Help: "Watch messages applied to the view."}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedmesh_agent_coalesced_messages_total",
			Help: "Watch messages whose revision never reached the dataplane on its own because a newer one was applied with it."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedmesh_agent_watch_reconnects_total",
			Help: "Watch streams opened after the first."}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedmesh_agent_watch_resyncs_total",
			Help: "Watch restarts forced by a stream the view could not follow (stale, out of sequence)."}),
		localEndpoints: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_local_endpoints",
			Help: "Endpoints of this node the agent compiles policy for."}),
		attached: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_attached_endpoints",
			Help: "Local endpoints whose interface the dataplane guards."}),
		ipcacheEntries: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_ipcache_entries",
			Help: "Entries in the IP-to-identity map handed to the dataplane."}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_status_reports_total",
			Help: "Node status reports sent to the control plane, by result."}, []string{"result"}),
		portErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_agent_errors_total",
			Help: "Failed calls into the dataplane, WireGuard, BGP or interface discovery, by component."}, []string{"component"}),
		serviceFrontends: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_service_translations",
			Help: "ClusterSetIP frontends (VIP, port, protocol) in the translation table handed to the dataplane."}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedmesh_agent_service_failovers_total",
			Help: "Times an imported service's affinity found no ready backend on its preferred side and failed over to the other clusters (or back to the own one)."}),
		failedOver: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_services_failed_over",
			Help: "Imported services currently served by the other side of their affinity."}),
		withdrawnClusters: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedmesh_agent_withdrawn_clusters",
			Help: "Exporting clusters whose backends are withdrawn from this node's choice because the control plane marked them unreachable."}),
	}
	reg.MustRegister(m.serviceFrontends, m.failovers, m.failedOver, m.withdrawnClusters,
		m.enforcedRevision, m.seenRevision, m.ready, m.connected, m.badInput, m.applies,
		m.applySeconds, m.messages, m.coalesced, m.reconnects, m.resyncs, m.localEndpoints, m.attached,
		m.ipcacheEntries, m.reports, m.portErrors)
	return m
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
