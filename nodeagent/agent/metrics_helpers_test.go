package agent_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/fedmesh/fedmesh/nodeagent/agent"
)

// metricValue reads one series from the agent's registry.
type metricValue float64

func (m metricValue) Describe(chan<- *prometheus.Desc) {}
func (m metricValue) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("v", "v", nil, nil), prometheus.UntypedValue, float64(m))
}

func find(t *testing.T, a *agent.Agent, name string, label string) metricValue {
	t.Helper()
	mfs, err := a.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !hasLabel(m, label) {
				continue
			}
			switch {
			case m.Gauge != nil:
				return metricValue(m.GetGauge().GetValue())
			case m.Counter != nil:
				return metricValue(m.GetCounter().GetValue())
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}

func mustGauge(t *testing.T, a *agent.Agent, name string) prometheus.Collector {
	return find(t, a, name, "")
}
func mustCounter(t *testing.T, a *agent.Agent, name string) prometheus.Collector {
	return find(t, a, name, "")
}
func mustCounterVec(t *testing.T, a *agent.Agent, name, label string) prometheus.Collector {
	return find(t, a, name, label)
}
