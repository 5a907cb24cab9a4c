// Package identity owns fedmesh's security identities: the canonical label
// set of a pod (its security labels plus its cluster and namespace as
// reserved labels), the reserved identities (world, host, remote-node,
// unknown), and a deterministic allocator of numeric identities that the
// control plane's FSM embeds so every replica assigns the same numbers.
//
// Nothing here does I/O or reads clocks; the allocator is a plain value with
// no locking (its owner, the FSM, serialises calls).
package identity

import (
	"sort"
	"strings"
)

// Reserved label keys. They are set from where the pod runs, never from the
// pod's own labels: a pod label with the fedmesh.io/ prefix is dropped so a
// workload cannot claim another cluster's or namespace's identity.
const (
	LabelCluster   = "fedmesh.io/cluster"
	LabelNamespace = "fedmesh.io/namespace"
	// ReservedPrefix is the label-key prefix fedmesh keeps for itself.
	ReservedPrefix = "fedmesh.io/"
)

// Label is one key=value pair.
type Label struct {
	Key, Value string
}

// Labels is a canonical label set: sorted by key, keys unique. Build it with
// For or New; the zero value is the empty set.
type Labels []Label

// New returns the canonical form of m (sorted by key).
func New(m map[string]string) Labels {
	ls := make(Labels, 0, len(m))
	for k, v := range m {
		ls = append(ls, Label{Key: k, Value: v})
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].Key < ls[j].Key })
	return ls
}

// For returns the security label set of a pod: its labels that pass filter
// (nil means DefaultFilter), without any fedmesh.io/ key, plus the reserved
// cluster and namespace labels.
func For(cluster, namespace string, podLabels map[string]string, filter *Filter) Labels {
	if filter == nil {
		filter = DefaultFilter()
	}
	m := make(map[string]string, len(podLabels)+2)
	for k, v := range podLabels {
		if strings.HasPrefix(k, ReservedPrefix) || !filter.Keep(k) {
			continue
		}
		m[k] = v
	}
	m[LabelCluster] = cluster
	m[LabelNamespace] = namespace
	return New(m)
}

// Get returns the value of key.
func (ls Labels) Get(key string) (string, bool) {
	i := sort.Search(len(ls), func(i int) bool { return ls[i].Key >= key })
	if i < len(ls) && ls[i].Key == key {
		return ls[i].Value, true
	}
	return "", false
}

// Map returns the labels as a map.
func (ls Labels) Map() map[string]string {
	m := make(map[string]string, len(ls))
	for _, l := range ls {
		m[l.Key] = l.Value
	}
	return m
}

// Pod returns the labels without the reserved fedmesh.io/ keys: what pod
// selectors match.
func (ls Labels) Pod() map[string]string {
	m := make(map[string]string, len(ls))
	for _, l := range ls {
		if !strings.HasPrefix(l.Key, ReservedPrefix) {
			m[l.Key] = l.Value
		}
	}
	return m
}

// String is the canonical encoding "k1=v1,k2=v2", usable as a map key: two
// sets are equal exactly when their strings are. Label keys and values cannot
// contain ',' or '=' except for the '/' and '=' rules of Kubernetes, so the
// encoding is unambiguous for valid labels; invalid ones are escaped.
func (ls Labels) String() string {
	var b strings.Builder
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(escape(l.Key))
		b.WriteByte('=')
		b.WriteString(escape(l.Value))
	}
	return b.String()
}

func escape(s string) string {
	if !strings.ContainsAny(s, `,=\`) {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `,`, `\,`, `=`, `\=`)
	return r.Replace(s)
}

// Filter decides which pod labels count for identity. Labels that change on
// every rollout (pod-template-hash) would otherwise give every ReplicaSet
// generation a fresh identity and churn every peer's policy maps.
type Filter struct {
	exact    map[string]bool
	prefixes []string
}

// DefaultExcluded are the label keys DefaultFilter drops: controller
// bookkeeping that differs between pods of one workload or between rollouts.
// A trailing '*' makes an entry a prefix.
var DefaultExcluded = []string{
	"pod-template-hash",
	"controller-revision-hash",
	"pod-template-generation",
	"statefulset.kubernetes.io/pod-name",
	"apps.kubernetes.io/pod-index",
	"controller-uid",
	"batch.kubernetes.io/controller-uid",
	"batch.kubernetes.io/job-completion-index",
}

// DefaultFilter drops DefaultExcluded.
func DefaultFilter() *Filter { return NewFilter(DefaultExcluded...) }

// NewFilter drops the given keys; an entry ending in '*' drops every key
// with that prefix.
func NewFilter(exclude ...string) *Filter {
	f := &Filter{exact: make(map[string]bool)}
	for _, e := range exclude {
		if p, ok := strings.CutSuffix(e, "*"); ok {
			f.prefixes = append(f.prefixes, p)
			continue
		}
		f.exact[e] = true
	}
	return f
}

// Keep reports whether key counts for identity.
func (f *Filter) Keep(key string) bool {
	if f.exact[key] {
		return false
	}
	for _, p := range f.prefixes {
		if strings.HasPrefix(key, p) {
			return false
		}
	}
	return true
}
