package syncer

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/fedmesh/fedmesh/controlplane/inproc"
	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func adminDeny(name string, priority int32) *cnpv1.ClusterNetworkPolicy {
	return &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: cnpv1.ClusterNetworkPolicySpec{
		Tier: cnpv1.AdminTier, Priority: priority,
		Subject: cnpv1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "db"}}},
		Ingress: []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "no-web", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
			From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "web"}}}}}},
	}}
}

// clusterPolicies returns the store's ClusterNetworkPolicies synced from
// cluster, by name.
func (e *fedEnv) clusterPolicies(cluster string) (map[string]*fedmeshv1.ClusterNetworkPolicy, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := fedmeshv1.NewClusterPolicyServiceClient(e.conn()).ListClusterPolicies(ctx, &fedmeshv1.ListClusterPoliciesRequest{Cluster: cluster,
		Source: fedmeshv1.ClusterPolicySource_CLUSTER_POLICY_SOURCE_SYNCED})
	if err != nil {
		return nil, err
	}
	out := map[string]*fedmeshv1.ClusterNetworkPolicy{}
	for _, p := range r.GetPolicies() {
		out[p.GetName()] = p
	}
	return out, nil
}

// storedSpec decodes a stored policy's spec.
func storedSpec(p *fedmeshv1.ClusterNetworkPolicy) (*cnpv1.ClusterNetworkPolicySpec, error) {
	return model.DecodeClusterPolicySpec(p.GetSpecJson())
}

// A ClusterNetworkPolicy created in a member cluster's real kube-apiserver
// reaches the store as that cluster's synced policy, its updates follow,
// one the CRD accepts but the federation cannot enforce (a nodes peer) is
// reported on the cluster (Event, metric) and never stored, and a policy
// deleted while the syncer was down is deleted by its next full resync.
func TestClusterNetworkPoliciesAreSyncedAndInvalidOnesReported(t *testing.T) {
	fed := startFed(t)
	m := fed.join("east", "10.1.0.0/16", nil)
	cnps := cnpclient.NewForConfigOrDie(m.kube.Config).PolicyV1alpha2().ClusterNetworkPolicies()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stop := m.startSyncer()

	if _, err := cnps.Create(ctx, adminDeny("guard", 10), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "synced policy east/guard at priority 10", func() error {
		ps, err := fed.clusterPolicies("east")
		if err != nil {
			return err
		}
		if ps["guard"] == nil {
			return fmt.Errorf("store has %v", keysOf(ps))
		}
		s, err := storedSpec(ps["guard"])
		if err != nil || s.Priority != 10 || s.Ingress[0].Name != "no-web" || s.Tier != cnpv1.AdminTier {
			return fmt.Errorf("stored spec %+v (%v)", s, err)
		}
		return nil
	})

	g, err := cnps.Get(ctx, "guard", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g.Spec.Priority = 20
	if _, err := cnps.Update(ctx, g, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the update reaches the store", func() error {
		ps, err := fed.clusterPolicies("east")
		if err != nil {
			return err
		}
		if s, err := storedSpec(ps["guard"]); err != nil || s.Priority != 20 {
			return fmt.Errorf("stored %+v (%v)", s, err)
		}
		return nil
	})

	// Valid for the CRD (experimental channel), not for fedmesh, which
	// does not track node addresses.
	bad := adminDeny("to-nodes", 5)
	bad.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Name: "nodes", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
		To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{}}}}}
	if _, err := cnps.Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatalf("the CRD refuses a nodes peer: %v", err)
	}
	eventually(t, "an Invalid Event on to-nodes", func() error { return m.eventFor(ctx, metav1.NamespaceDefault, "to-nodes", "FedmeshSkippedInvalid") })
	evs, err := m.cs.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	named := false
	for _, e := range evs.Items {
		named = named || (e.InvolvedObject.Name == "to-nodes" && strings.Contains(e.Message, "spec.egress[0].to[0].nodes"))
	}
	if !named {
		t.Fatal("the Event does not name the field the federation refuses")
	}
	if v := counterValue(t, m.reg, "fedmesh_syncer_skipped_total", "clusterpolicy", "Invalid"); v != 1 {
		t.Fatalf("skipped metric = %v, want 1", v)
	}
	ps, err := fed.clusterPolicies("east")
	if err != nil || ps["to-nodes"] != nil || ps["guard"] == nil {
		t.Fatalf("store after the invalid policy: %v %v", keysOf(ps), err)
	}

	stop()
	if err := cnps.Delete(ctx, "guard", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	stop = m.startSyncer()
	storeEmpty := func() error {
		ps, err := fed.clusterPolicies("east")
		if err != nil {
			return err
		}
		if len(ps) != 0 {
			return fmt.Errorf("store has %v", keysOf(ps))
		}
		return nil
	}
	eventually(t, "the resync deletes the ghost east/guard", storeEmpty)

	// The cluster's operators remove the CRD while the syncer is down: its
	// policies go with it, in the cluster and, at the next resync, in the
	// federation.
	if _, err := cnps.Create(ctx, adminDeny("again", 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "synced policy east/again", func() error {
		ps, err := fed.clusterPolicies("east")
		if err != nil || ps["again"] == nil {
			return fmt.Errorf("store has %v (%v)", keysOf(ps), err)
		}
		return nil
	})
	stop()
	crds := dynamic.NewForConfigOrDie(m.kube.Config).Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if err := crds.Delete(ctx, "clusternetworkpolicies.policy.networking.k8s.io", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the CRD is gone", func() error {
		if ok, err := servesClusterPolicies(m.cs.Discovery()); err != nil || ok {
			return fmt.Errorf("still served (%v)", err)
		}
		return nil
	})
	s, _ := m.startSyncerWith(nil)
	eventually(t, "the resync of a cluster without the CRD deletes its policies", storeEmpty)
	if s.cnp != nil {
		t.Fatal("the syncer watches ClusterNetworkPolicies after their CRD is gone")
	}
}

// A cluster without the CRD is synced as before: no ClusterNetworkPolicy
// watch and no error, also against a control plane that takes no
// ClusterNetworkPolicies (one older than log format 5 refuses the resync's
// empty batch that clears a removed CRD's policies).
func TestClusterWithoutTheCRDIsSyncedWithoutClusterPolicies(t *testing.T) {
	fed := startFed(t)
	kube := kubetest.Start(t, kubetest.Options{NoClusterNetworkPolicyCRD: true})
	fed.register(&fedmeshv1.Cluster{Name: "west", PodCidrs: []string{"10.2.0.0/16"}})
	m := &member{t: t, name: "west", env: fed, kube: kube, cs: kube.Clientset(), mcs: mcsclient.NewForConfigOrDie(kube.Config),
		rep: fed.cp.Leader(), faults: inproc.NewFaults()}
	s, _ := m.startSyncerWith(func(c *Config) { c.ControlPlane = noClusterPolicies{c.ControlPlane} })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kube.CreateNamespace(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	m.pod(ctx, "web", "p1", map[string]string{"app": "web"}, nil, "10.2.0.5")
	fed.endpointsAre("west", "web/p1")
	if s.cnp != nil {
		t.Fatal("the syncer watches ClusterNetworkPolicies of a cluster without the CRD")
	}
	if v := counterValue(t, m.reg, "fedmesh_syncer_send_errors_total"); v != 0 {
		t.Fatalf("%v failed writes", v)
	}
}

// noClusterPolicies is a control plane that refuses ClusterNetworkPolicy
// writes, as one older than log format 5 does.
type noClusterPolicies struct{ ControlPlane }

func (noClusterPolicies) ApplyClusterPolicies(context.Context, *fedmeshv1.ApplyClusterPoliciesRequest) (uint64, error) {
	return 0, status.Error(codes.FailedPrecondition, "no ClusterNetworkPolicy commands here")
}

func (noClusterPolicies) DeleteClusterPolicy(context.Context, *fedmeshv1.ClusterPolicyKey) (uint64, error) {
	return 0, status.Error(codes.FailedPrecondition, "no ClusterNetworkPolicy commands here")
}

// A CRD installed after the syncer started is found by its periodic
// discovery: the cluster's ClusterNetworkPolicies are synced without a
// restart.
func TestClusterPolicyCRDInstalledLaterIsSynced(t *testing.T) {
	fed := startFed(t)
	kube := kubetest.Start(t, kubetest.Options{NoClusterNetworkPolicyCRD: true})
	fed.register(&fedmeshv1.Cluster{Name: "north", PodCidrs: []string{"10.3.0.0/16"}})
	m := &member{t: t, name: "north", env: fed, kube: kube, cs: kube.Clientset(), mcs: mcsclient.NewForConfigOrDie(kube.Config),
		rep: fed.cp.Leader(), faults: inproc.NewFaults()}
	m.startSyncerWith(func(c *Config) { c.DiscoveryInterval = 100 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := kube.CreateNamespace(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	m.pod(ctx, "web", "p1", nil, nil, "10.3.0.5")
	fed.endpointsAre("north", "web/p1")
	if err := kubetest.InstallClusterNetworkPolicyCRD(ctx, kube.Config); err != nil {
		t.Fatal(err)
	}
	if _, err := cnpclient.NewForConfigOrDie(kube.Config).PolicyV1alpha2().ClusterNetworkPolicies().Create(ctx, adminDeny("late", 4), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "synced policy north/late", func() error {
		ps, err := fed.clusterPolicies("north")
		if err != nil || ps["late"] == nil {
			return fmt.Errorf("store has %v (%v)", keysOf(ps), err)
		}
		return nil
	})
}
