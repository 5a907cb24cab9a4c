package dns

import (
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the resolver's Prometheus series, registered on the registry
// the caller injects. Label values are bounded: query types outside a
// fixed set count as "other", so a client cannot grow the series.
type metrics struct {
	queries     *prometheus.CounterVec
	upstream    *prometheus.HistogramVec
	timeouts    *prometheus.CounterVec
	upErrors    *prometheus.CounterVec
	badRequests *prometheus.CounterVec
	dropped     *prometheus.CounterVec
	truncated   *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	verdicts    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_dns_queries_total",
			Help: "Queries answered, by query type, response code and source (zone, upstream, local)."},
			[]string{"type", "rcode", "source"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fedmesh_dns_upstream_seconds",
			Help:    "Time the upstream took to answer a forwarded query, by transport.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"transport"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_dns_upstream_timeouts_total",
			Help: "Forwarded queries the upstream did not answer in time, by transport."}, []string{"transport"}),
		upErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_dns_upstream_errors_total",
			Help: "Forwarded queries that failed other than by timeout, and answers that could not be packed (reason pack), by reason."}, []string{"reason"}),
		badRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_dns_bad_requests_total",
			Help: "Requests answered with an error for what they were (FORMERR, NOTIMP, BADVERS, REFUSED), by reason."},
			[]string{"rcode", "reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_dns_dropped_total",
			Help: "Requests dropped without an answer, by reason."}, []string{"reason"}),
		truncated: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_dns_truncated_total",
			Help: "UDP answers sent with the TC bit, by source."}, []string{"source"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fedmesh_dns_query_seconds",
			Help:    "Time from receiving a query to its answer being ready, by source.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 2, 20)}, []string{"source"}),
	}
	m.verdicts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedmesh_dns_verdicts_total",
		Help: "Queries a policy hook decided, by verdict of policy by DNS name (allowed, refused, denied, unpoliced, error)."},
		[]string{"verdict"})
	reg.MustRegister(m.verdicts)
	reg.MustRegister(m.queries, m.upstream, m.timeouts, m.upErrors, m.badRequests, m.dropped, m.truncated, m.latency)
	return m
}

// typeLabel bounds the type label to the types a pod's resolver asks.
func typeLabel(t uint16) string {
	switch t {
	case dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypePTR, dns.TypeCNAME, dns.TypeTXT,
		dns.TypeMX, dns.TypeNS, dns.TypeSOA, dns.TypeANY, dns.TypeHTTPS, dns.TypeSVCB,
		dns.TypeCAA, dns.TypeDS, dns.TypeDNSKEY, dns.TypeAXFR, dns.TypeIXFR:
		return dns.TypeToString[t]
	}
	return "other"
}

func rcodeLabel(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "other"
}

// verdictLabel bounds the verdict label to the Verdict* values.
func verdictLabel(v string) string {
	switch v {
	case VerdictAllowed, VerdictRefused, VerdictDenied, VerdictUnpoliced, VerdictError:
		return v
	}
	return "other"
}
