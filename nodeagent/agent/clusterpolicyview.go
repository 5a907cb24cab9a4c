package agent

import (
	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// ClusterNetworkPolicies (both tiers, synced and federated) in the view:
// kept as the API's objects like NetworkPolicies, and handed to the
// compiler through policy.Apply in the form policy.ClusterPolicyFromProto
// gives — the converter Reach's path (policy.UpdateFromEvent) uses too.

func decodeClusterPolicyEvent(ev *fedmeshv1.Event, ch *Change) bool {
	o, ok := ev.GetObject().(*fedmeshv1.Event_ClusterNetworkPolicy)
	if !ok {
		return false
	}
	ch.Kind = policy.KindClusterPolicy
	ch.ClusterPolicyKey = policy.ClusterPolicyKey{Cluster: o.ClusterNetworkPolicy.GetCluster(), Name: o.ClusterNetworkPolicy.GetName()}
	if !ch.Delete {
		ch.ClusterPolicy = o.ClusterNetworkPolicy
	}
	return true
}

func (v *View) putClusterPolicy(ch Change) {
	if ch.Delete {
		delete(v.ClusterPolicies, ch.ClusterPolicyKey)
	} else {
		v.ClusterPolicies[ch.ClusterPolicyKey] = ch.ClusterPolicy
	}
}

func (v *View) sameClusterPolicy(ch Change) bool {
	o := v.ClusterPolicies[ch.ClusterPolicyKey]
	if o == nil {
		return false
	}
	if r := o.GetMeta().GetRevision(); r != 0 && r == ch.ClusterPolicy.GetMeta().GetRevision() {
		return true
	}
	return proto.Equal(o, ch.ClusterPolicy)
}

func (v *View) eachClusterPolicy(del func(Change)) {
	for k := range v.ClusterPolicies {
		del(Change{Kind: policy.KindClusterPolicy, ClusterPolicyKey: k})
	}
}

// clusterPolicyUpdate is a ClusterNetworkPolicy change in the compiler's
// form; a spec that does not decode is the compiler's rejection (Apply's
// failure rule keeps the previous version), as in Reach.
func (c Change) clusterPolicyUpdate() policy.Update {
	up := policy.Update{Kind: c.Kind, Delete: c.Delete, ClusterPolicyKey: c.ClusterPolicyKey}
	if !c.Delete {
		up.ClusterPolicy, up.Err = policy.ClusterPolicyFromProto(c.ClusterPolicy)
	}
	return up
}
