package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
)

// openServices opens the ClusterSetIP translation the agent loads its
// service tables into: with --dataplane=ebpf, the socket-level translation
// attached to --service-cgroup (the cgroup v2 root or the kubepods cgroup on
// a real node, the node's pod cgroup in the lab), pinned under
// <bpf-pin-dir>/services so it keeps translating across a restart and goes
// with --uninstall; with --dataplane=memory, the in-memory twin. nil (and a
// no-op close) when no cgroup is set: no translation.
func openServices(ctx context.Context, o *options, log *slog.Logger) (dataplane.ServiceTranslator, func() error, error) {
	noop := func() error { return nil }
	switch {
	case o.dataplane == "memory":
		return dataplane.NewSockLBMemory(dataplane.ServiceLimits{}, rand.Uint32), noop, nil
	case o.serviceCgroup == "":
		return nil, noop, nil
	}
	lb, err := dataplane.NewSockLB(ctx, dataplane.ServiceConfig{PinDir: filepath.Join(o.bpfPinDir, "services"),
		Cgroup: o.serviceCgroup, Logger: log})
	if err != nil {
		return nil, nil, fmt.Errorf("open service translation on cgroup %s: %w", o.serviceCgroup, err)
	}
	return lb, lb.Close, nil
}

// serviceCollector exports what the translation holds and does, read at
// scrape time: loaded frontends and backends, frontends served with fewer
// backends than listed (the maps are full: raise their sizes), and the
// socket calls translated, rejected (no backend) and shown the VIP.
type serviceCollector struct {
	tr                                  dataplane.ServiceTranslator
	log                                 *slog.Logger
	frontends, backends, truncated, ops *prometheus.Desc
}

func newServiceCollector(tr dataplane.ServiceTranslator, log *slog.Logger) *serviceCollector {
	return &serviceCollector{tr: tr, log: log,
		frontends: prometheus.NewDesc("fedmesh_dataplane_service_frontends",
			"ClusterSetIP frontends (VIP, port, protocol) the translation holds.", nil, nil),
		backends: prometheus.NewDesc("fedmesh_dataplane_service_backends",
			"Backends the translation holds over all frontends.", nil, nil),
		truncated: prometheus.NewDesc("fedmesh_dataplane_service_truncated_frontends",
			"Frontends served with fewer backends than their table lists (translation maps full or invalid backends).", nil, nil),
		ops: prometheus.NewDesc("fedmesh_dataplane_service_socket_ops_total",
			"Socket calls the translation handled, by result: translated (sent to a backend), rejected (no backend), reversed (peer shown as the VIP or the cluster DNS address), "+
				"dns_redirected (a pod's DNS sent to the node-local resolver), dns_exempt (DNS from a socket with the agent's upstream mark, left alone).",
			[]string{"result"}, nil),
	}
}

func (c *serviceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.frontends
	ch <- c.backends
	ch <- c.truncated
	ch <- c.ops
}

func (c *serviceCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := c.tr.ServiceStatus(ctx)
	if err != nil {
		c.log.Warn("read service translation status", "error", err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.frontends, prometheus.GaugeValue, float64(st.Frontends))
	ch <- prometheus.MustNewConstMetric(c.backends, prometheus.GaugeValue, float64(st.Backends))
	ch <- prometheus.MustNewConstMetric(c.truncated, prometheus.GaugeValue, float64(len(st.Truncated)))
	ch <- prometheus.MustNewConstMetric(c.ops, prometheus.CounterValue, float64(st.Translated), "translated")
	ch <- prometheus.MustNewConstMetric(c.ops, prometheus.CounterValue, float64(st.Rejected), "rejected")
	ch <- prometheus.MustNewConstMetric(c.ops, prometheus.CounterValue, float64(st.Reversed), "reversed")
	ch <- prometheus.MustNewConstMetric(c.ops, prometheus.CounterValue, float64(st.DNSRedirected), "dns_redirected")
	ch <- prometheus.MustNewConstMetric(c.ops, prometheus.CounterValue, float64(st.DNSExempt), "dns_exempt")
}
