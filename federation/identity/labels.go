package identity

import (
	"cmp"
	"slices"
	"strings"
)

// ReservedPrefix is the label-key prefix fedmesh keeps for itself. Its keys
// are ordinary labels to selectors; they start in the default filter (see
// the package doc).
const ReservedPrefix = "fedmesh.io/"

// Label is one key=value pair.
type Label struct {
	Key, Value string
}

// Labels is a canonical label set: sorted by key, keys unique. Build it with
// New; the zero value is the empty set.
type Labels []Label

// New returns the canonical form of m (sorted by key).
func New(m map[string]string) Labels {
	ls := make(Labels, 0, len(m))
	for k, v := range m {
		ls = append(ls, Label{Key: k, Value: v})
	}
	ls.sort()
	return ls
}

func (ls Labels) sort() {
	slices.SortFunc(ls, func(a, b Label) int { return strings.Compare(a.Key, b.Key) })
}

// Get returns the value of key.
func (ls Labels) Get(key string) (string, bool) {
	i, ok := slices.BinarySearchFunc(ls, key, func(l Label, k string) int { return strings.Compare(l.Key, k) })
	if ok {
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

// String is the canonical encoding "k1=v1,k2=v2": two sets are equal exactly
// when their strings are (',', '=' and '\' are escaped).
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

func compareLabels(a, b Labels) int {
	return slices.CompareFunc(a, b, func(x, y Label) int {
		if c := strings.Compare(x.Key, y.Key); c != 0 {
			return c
		}
		return strings.Compare(x.Value, y.Value)
	})
}

func escape(s string) string {
	if !strings.ContainsAny(s, `,=\`) {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `,`, `\,`, `=`, `\=`)
	return r.Replace(s)
}

// Key is what one numeric identity stands for: where the pods run and the
// pod labels that count for identity. Cluster and namespace are fields, not
// labels, so no pod label can forge them.
type Key struct {
	Cluster, Namespace string
	// Labels are the pod labels that count (see Relevance), canonical.
	Labels Labels
}

// Equal reports whether k and o stand for the same identity.
func (k Key) Equal(o Key) bool {
	if k.Cluster != o.Cluster || k.Namespace != o.Namespace || len(k.Labels) != len(o.Labels) {
		return false
	}
	// Keys built from one shared label set share the slice.
	return len(k.Labels) == 0 || &k.Labels[0] == &o.Labels[0] || slices.Equal(k.Labels, o.Labels)
}

// Compare orders keys by cluster, namespace, then labels.
func (k Key) Compare(o Key) int {
	if c := cmp.Compare(k.Cluster, o.Cluster); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Namespace, o.Namespace); c != 0 {
		return c
	}
	return compareLabels(k.Labels, o.Labels)
}

// String renders the key for people: "cluster/namespace{k1=v1,k2=v2}".
func (k Key) String() string {
	return k.Cluster + "/" + k.Namespace + "{" + k.Labels.String() + "}"
}

// For returns the Key of a pod of cluster and namespace with the given
// labels: the labels r counts (nil: the default filter alone).
func For(cluster, namespace string, podLabels map[string]string, r *Relevance) Key {
	if r == nil {
		r = defaultRelevance
	}
	return r.Key(cluster, namespace, podLabels)
}

// Filter decides which pod label keys count for identity by default. Labels
// that change on every rollout (pod-template-hash) would otherwise give
// every ReplicaSet generation a fresh identity and churn every peer's policy
// maps.
type Filter struct {
	exact    map[string]bool
	prefixes []string
}

// DefaultExcluded are the label keys DefaultFilter drops: controller
// bookkeeping that differs between pods of one workload or between
// rollouts, and the reserved prefix. A trailing '*' makes an entry a prefix.
// It is part of the replicated state machine (see the package doc).
var DefaultExcluded = []string{
	"pod-template-hash",
	"controller-revision-hash",
	"pod-template-generation",
	"statefulset.kubernetes.io/pod-name",
	"apps.kubernetes.io/pod-index",
	"controller-uid",
	"batch.kubernetes.io/controller-uid",
	"batch.kubernetes.io/job-completion-index",
	ReservedPrefix + "*",
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

// Keep reports whether key counts for identity by default.
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

// Relevance decides which pod label keys count for identity: those the
// filter keeps, and each filtered key while some stored policy selects on
// it. Its owner (the FSM) tells it every policy stored and removed; it
// counts, per filtered key, the policies that select on it.
type Relevance struct {
	filter   *Filter
	selected map[string]uint32
}

// defaultRelevance is the default filter with nothing selected; it is never
// changed.
var defaultRelevance = NewRelevance(nil)

// NewRelevance returns a relevance over filter (nil: DefaultFilter) with
// no policy selecting on anything.
func NewRelevance(filter *Filter) *Relevance {
	if filter == nil {
		filter = DefaultFilter()
	}
	return &Relevance{filter: filter, selected: map[string]uint32{}}
}

// Counts reports whether key counts for identity.
func (r *Relevance) Counts(key string) bool {
	return r.filter.Keep(key) || r.selected[key] > 0
}

// Select records one more policy selecting on keys (each key once per
// policy) and returns, sorted, the filtered keys that start to count.
func (r *Relevance) Select(keys []string) (started []string) {
	for _, k := range uniq(keys) {
		if r.filter.Keep(k) {
			continue
		}
		r.selected[k]++
		if r.selected[k] == 1 {
			started = append(started, k)
		}
	}
	return started
}

// Unselect records that one policy selecting on keys is gone and returns,
// sorted, the filtered keys that stop counting. Keys nothing selected are
// ignored.
func (r *Relevance) Unselect(keys []string) (stopped []string) {
	for _, k := range uniq(keys) {
		n, ok := r.selected[k]
		if !ok {
			continue
		}
		if n > 1 {
			r.selected[k] = n - 1
			continue
		}
		delete(r.selected, k)
		stopped = append(stopped, k)
	}
	return stopped
}

// Selected returns, sorted, the filtered keys that count because a policy
// selects on them.
func (r *Relevance) Selected() []string {
	out := make([]string, 0, len(r.selected))
	for k := range r.selected {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Key returns the Key of a pod: cluster, namespace and the labels that
// count.
func (r *Relevance) Key(cluster, namespace string, podLabels map[string]string) Key {
	ls := make(Labels, 0, len(podLabels))
	for k, v := range podLabels {
		if r.Counts(k) {
			ls = append(ls, Label{Key: k, Value: v})
		}
	}
	ls.sort()
	return Key{Cluster: cluster, Namespace: namespace, Labels: ls}
}

func uniq(keys []string) []string {
	out := slices.Clone(keys)
	slices.Sort(out)
	return slices.Compact(out)
}
