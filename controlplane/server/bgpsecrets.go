package server

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// BGP passwords by Secret reference. A member cluster's syncer reads the
// Secret keys that BGP peers selecting its nodes reference and pushes
// their values to every replica (PushBGPSecrets); a replica keeps them in
// memory only, never in the Raft log or a snapshot, so they are never
// stored in clear and never replicated. A node's agent receives, on its
// own mTLS stream (WatchBGPPasswords), the passwords of the peers that
// select its node, and nothing else; Get, List and Watch of peers show
// every principal the reference only. A restarted replica holds none
// until the syncer's next push (it pushes on change and every few
// seconds); an agent keeps its last good password meanwhile.

// maxSecretValue is TCP-MD5's key limit.
const maxSecretValue = 80

type secretKey struct{ ns, name, key string }

func secretKeyOf(r *fedmeshv1.BGPSecretKeyRef) secretKey {
	return secretKey{r.GetNamespace(), r.GetName(), r.GetKey()}
}

// secretStore holds each cluster's pushed values. Its zero value is ready.
type secretStore struct {
	mu      sync.Mutex
	values  map[string]map[secretKey]*fedmeshv1.BGPSecretValue
	changed chan struct{} // closed and replaced on every push
}

func (s *secretStore) changedCh() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

func (s *secretStore) put(cluster string, vals []*fedmeshv1.BGPSecretValue) {
	m := make(map[secretKey]*fedmeshv1.BGPSecretValue, len(vals))
	for _, v := range vals {
		m[secretKeyOf(v.GetRef())] = v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.values == nil {
		s.values = map[string]map[secretKey]*fedmeshv1.BGPSecretValue{}
	}
	s.values[cluster] = m
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
}

func (s *secretStore) get(cluster string, k secretKey) *fedmeshv1.BGPSecretValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.values[cluster][k]
}

// wantedSecrets are the keys the peers selecting some node of cluster
// reference, sorted.
func wantedSecrets(st *store.State, cluster string) []*fedmeshv1.BGPSecretKeyRef {
	seen := map[secretKey]bool{}
	var out []*fedmeshv1.BGPSecretKeyRef
	for _, p := range st.BGPPeerSpecs() {
		ref := p.GetPassword().GetSecret()
		if ref == nil || seen[secretKeyOf(ref)] {
			continue
		}
		for _, n := range st.Nodes(cluster) {
			if st.BGPPeerSelects(p, n) {
				seen[secretKeyOf(ref)] = true
				out = append(out, ref)
				break
			}
		}
	}
	slices.SortFunc(out, func(a, b *fedmeshv1.BGPSecretKeyRef) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()), cmp.Compare(a.GetKey(), b.GetKey()))
	})
	return out
}

func (s *bgpService) PushBGPSecrets(ctx context.Context, req *fedmeshv1.PushBGPSecretsRequest) (*fedmeshv1.PushBGPSecretsResponse, error) {
	for i, v := range req.GetSecrets() {
		if len(v.GetValue()) > maxSecretValue {
			return nil, status.Errorf(codes.InvalidArgument, "secrets[%d].value: %d bytes; TCP-MD5 keys are at most %d", i, len(v.GetValue()), maxSecretValue)
		}
		if r := v.GetRef(); r.GetNamespace() == "" || r.GetName() == "" || r.GetKey() == "" {
			return nil, status.Errorf(codes.InvalidArgument, "secrets[%d].ref: namespace, name and key are required", i)
		}
	}
	resp := &fedmeshv1.PushBGPSecretsResponse{}
	s.c.view(func(st *store.State) { resp.Wanted = wantedSecrets(st, req.GetCluster()) })
	// Keep only what is wanted: a syncer cannot park other values here.
	want := map[secretKey]bool{}
	for _, r := range resp.Wanted {
		want[secretKeyOf(r)] = true
	}
	var keep []*fedmeshv1.BGPSecretValue
	for _, v := range req.GetSecrets() {
		if want[secretKeyOf(v.GetRef())] {
			keep = append(keep, v)
		}
	}
	s.secrets.put(req.GetCluster(), keep)
	return resp, nil
}

// nodePasswords are the passwords of the peers that select node (cluster,
// name) and reference a Secret, sorted by peer.
func (s *bgpService) nodePasswords(st *store.State, cluster, name string) []*fedmeshv1.BGPPeerPassword {
	n := st.Node(cluster, name)
	if n == nil {
		return nil
	}
	var out []*fedmeshv1.BGPPeerPassword
	for _, p := range st.BGPPeerSpecs() {
		ref := p.GetPassword().GetSecret()
		if ref == nil || !st.BGPPeerSelects(p, n) {
			continue
		}
		pw := &fedmeshv1.BGPPeerPassword{Peer: p.GetName()}
		switch v := s.secrets.get(cluster, secretKeyOf(ref)); {
		case v == nil:
			pw.Error = fmt.Sprintf("Secret %s/%s key %s not pushed to this replica yet by cluster %s's syncer", ref.GetNamespace(), ref.GetName(), ref.GetKey(), cluster)
		case v.GetError() != "":
			pw.Error = v.GetError()
		default:
			pw.Password = v.GetValue()
		}
		out = append(out, pw)
	}
	return out
}

func (s *bgpService) WatchBGPPasswords(req *fedmeshv1.WatchBGPPasswordsRequest, stream fedmeshv1.BGPService_WatchBGPPasswordsServer) error {
	ctx := stream.Context()
	// The authorization table admits node agents only; a stream's request
	// is known here: the caller must be that very node.
	if p, ok := auth.PrincipalFrom(ctx); ok && (p.Kind != auth.KindNode || p.Cluster != req.GetCluster() || p.Node != req.GetNode()) {
		return status.Errorf(codes.PermissionDenied, "%s may not receive the BGP passwords of node %s/%s: only that node's agent may", p, req.GetCluster(), req.GetNode())
	}
	var sent *fedmeshv1.WatchBGPPasswordsResponse
	for {
		changed, pushed := s.c.fsm.Changed(), s.secrets.changedCh()
		resp := &fedmeshv1.WatchBGPPasswordsResponse{}
		s.c.view(func(st *store.State) { resp.Passwords = s.nodePasswords(st, req.GetCluster(), req.GetNode()) })
		if sent == nil || !proto.Equal(sent, resp) {
			if err := stream.Send(resp); err != nil {
				return err
			}
			sent = resp
		}
		select {
		case <-changed:
		case <-pushed:
		case <-ctx.Done():
			return nil
		}
	}
}
