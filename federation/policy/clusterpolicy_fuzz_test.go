package policy

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// FuzzClusterPolicyFromProto decodes arbitrary API objects. It must never
// panic; what it converts must convert back to the canonical object (the
// spec re-encoded canonically), and an object the edge accepts must
// convert and compile (the edge, the converter and the compiler agree).
func FuzzClusterPolicyFromProto(f *testing.F) {
	for _, s := range []string{
		denyTCP80,
		`{"tier":"Baseline","priority":0,"subject":{"pods":{"namespaceSelector":{},"podSelector":{}}},"egress":[{"action":"Pass","to":[{"networks":["10.0.0.0/8"]}]}]}`,
		`{"tier":"Admin","priority":1,"subject":{"namespaces":{}},"unknown":true}`,
		`{"tier":"Admin"} {}`,
		``,
	} {
		p := &fedmeshv1.ClusterNetworkPolicy{Name: "p", SpecJson: []byte(s), ClusterSelector: &fedmeshv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}},
			IngressPeerClusters: []*fedmeshv1.ClusterPolicyRulePeers{{Peers: []*fedmeshv1.ClusterPolicyPeerScope{{}, {ClusterSelector: &fedmeshv1.LabelSelector{}}}}}}
		b, _ := proto.Marshal(p)
		f.Add(b)
		p.Cluster = "c1"
		b, _ = proto.Marshal(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := &fedmeshv1.ClusterNetworkPolicy{}
		if proto.Unmarshal(data, p) != nil {
			return
		}
		accepted := len(model.ValidateClusterPolicy(nil, p)) == 0
		cp, err := ClusterPolicyFromProto(p)
		if err != nil {
			if accepted {
				t.Fatalf("the edge accepts %v but the converter refuses it: %v", p, err)
			}
			return
		}
		back, err := ClusterPolicyToProto(cp)
		if err != nil {
			t.Fatalf("convert back: %v", err)
		}
		again, err := ClusterPolicyFromProto(back)
		if err != nil {
			t.Fatalf("the converter refuses its own output %v: %v", back, err)
		}
		if back2, _ := ClusterPolicyToProto(again); !proto.Equal(back, back2) {
			t.Fatalf("conversion is not stable:\n%v\n%v", back, back2)
		}
		if accepted {
			if err := NewTiers().Upsert(cp); err != nil {
				t.Fatalf("the edge accepts %v but the compiler refuses it: %v", p, err)
			}
		}
	})
}
