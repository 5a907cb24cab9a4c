package store

import (
	"crypto/sha256"
	"sort"
	"strings"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Reserved identities. Numbers below FirstAllocatedIdentity are never
// allocated to endpoints, so dataplanes can give them fixed meanings.
const (
	// IdentityUnknown is no identity (an address the federation does not know).
	IdentityUnknown uint32 = 0
	// IdentityHost is the local node.
	IdentityHost uint32 = 1
	// IdentityWorld is any address outside the federation.
	IdentityWorld uint32 = 2
	// IdentityRemoteNode is another node of the federation.
	IdentityRemoteNode uint32 = 6
	// FirstAllocatedIdentity is the first number given to an endpoint label set.
	FirstAllocatedIdentity uint32 = 256
)

// IdentityKey is what an identity stands for: a cluster, a namespace and
// the SHA-256 of the canonical encoding of the security labels (a digest
// rather than the encoding keeps a label-heavy federation's identities
// small; a collision is as likely as guessing a 128-bit key).
type IdentityKey struct {
	Cluster   string
	Namespace string
	Labels    [sha256.Size]byte
}

// KeyOf returns the identity key of an endpoint.
func KeyOf(e *fedmeshv1.Endpoint) IdentityKey {
	return IdentityKey{Cluster: e.GetCluster(), Namespace: e.GetNamespace(), Labels: sha256.Sum256([]byte(CanonicalLabels(e.GetLabels())))}
}

// CanonicalLabels encodes a label set so that equal sets encode equally:
// sorted by key, key and value separated by NUL and pairs by NUL NUL, bytes
// that no Kubernetes label contains, so two different sets never collide.
func CanonicalLabels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString("\x00\x00")
		}
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
	}
	return b.String()
}

type identity struct {
	id     uint32
	key    IdentityKey
	refs   int
	labels map[string]string // the labels of the first endpoint, shared
}

// Identities allocates numeric identities in one 32-bit space for the whole
// federation. Numbers are handed out in call order from a cursor that only
// moves forward (wrapping past the top to FirstAllocatedIdentity), so a
// released number is not reused until the space wraps, and replicas that make
// the same calls in the same order agree on every number. Not safe for
// concurrent use: the FSM owns it.
type Identities struct {
	byKey map[IdentityKey]*identity
	byID  map[uint32]*identity
	next  uint32
}

// NewIdentities returns an empty allocator.
func NewIdentities() *Identities {
	return &Identities{byKey: map[IdentityKey]*identity{}, byID: map[uint32]*identity{}, next: FirstAllocatedIdentity}
}

// Acquire returns the identity of k, allocating one on first use, and takes
// a reference on it.
func (a *Identities) Acquire(k IdentityKey) uint32 {
	n, _ := a.acquire(k, nil)
	return n
}

// acquire is Acquire that also returns the identity's label map (labels,
// for a new identity), for endpoints to share.
func (a *Identities) acquire(k IdentityKey, labels map[string]string) (uint32, map[string]string) {
	if id, ok := a.byKey[k]; ok {
		id.refs++
		return id.id, id.labels
	}
	n := a.next
	for {
		if n < FirstAllocatedIdentity {
			n = FirstAllocatedIdentity
		}
		if _, used := a.byID[n]; !used {
			break
		}
		n++
	}
	a.next = n + 1
	id := &identity{id: n, key: k, refs: 1, labels: labels}
	a.byKey[k] = id
	a.byID[n] = id
	return n, labels
}

// Release drops one reference; the identity is freed with the last one.
func (a *Identities) Release(n uint32) {
	id, ok := a.byID[n]
	if !ok {
		return
	}
	id.refs--
	if id.refs <= 0 {
		delete(a.byID, n)
		delete(a.byKey, id.key)
	}
}

// Lookup returns the key an identity stands for.
func (a *Identities) Lookup(n uint32) (IdentityKey, bool) {
	id, ok := a.byID[n]
	if !ok {
		return IdentityKey{}, false
	}
	return id.key, true
}

// labelsOf returns the shared label map of a known identity key.
func (a *Identities) labelsOf(k IdentityKey) (map[string]string, bool) {
	id, ok := a.byKey[k]
	if !ok {
		return nil, false
	}
	return id.labels, true
}

// Len is the number of identities in use.
func (a *Identities) Len() int { return len(a.byID) }

// restore re-takes a reference on a known number (snapshot restore) and
// returns the shared label map.
func (a *Identities) restore(n uint32, k IdentityKey, labels map[string]string) map[string]string {
	if id, ok := a.byID[n]; ok {
		id.refs++
		return id.labels
	}
	id := &identity{id: n, key: k, refs: 1, labels: labels}
	a.byKey[k] = id
	a.byID[n] = id
	return labels
}
