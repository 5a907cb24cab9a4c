package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

// syncedCNP is an upstream ClusterNetworkPolicy a member cluster's admin
// applies with kubectl: in that cluster, the api pods refuse the web pods
// of namespace demo (peers are that cluster's pods only).
const syncedCNP = `apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: api-refuses-web
spec:
  tier: Admin
  priority: 5
  subject:
    pods:
      namespaceSelector: {}
      podSelector:
        matchLabels: {app: api}
  ingress:
  - name: no-web
    action: Deny
    from:
    - pods:
        namespaceSelector:
          matchLabels: {kubernetes.io/metadata.name: demo}
        podSelector:
          matchLabels: {app: web}
`

func TestTieredPolicyEndToEnd(t *testing.T) {
	l := useLab(t, lab.Config{Clusters: 2, Nodes: 2, Pods: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a, b := l.Topo.Clusters[0], l.Topo.Clusters[1]
	webA, apiA := a.Nodes[0].Pods[0], a.Nodes[1].Pods[1]
	webB, apiB, apiB2 := b.Nodes[1].Pods[0], b.Nodes[0].Pods[1], b.Nodes[1].Pods[1]
	blocked := func(from, to lab.Pod, fam int) error {
		// No retry: what --wait (or WaitEnforced) returned is in force.
		if err := l.ProbeFrom(ctx, from.Name, "tcp", addrOf(to, fam), time.Second); !errors.Is(err, lab.ErrBlocked) {
			return errors.New(from.Name + " -> " + to.Name + ": connected, want blocked")
		}
		return nil
	}
	file := func(name, body string) string {
		p := filepath.Join(l.Dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	reach := func(src, dst lab.Pod, srcC, dstC lab.Cluster, wants ...string) {
		t.Helper()
		out, err := l.Fedctl(ctx, "reach", srcC.Name+"/demo/"+src.Name, dstC.Name+"/demo/"+dst.Name, "--port", "8080")
		if err != nil && !strings.Contains(err.Error(), "denied") && !strings.Contains(out, "DENY") && !strings.Contains(strings.ToLower(out), "denied") {
			t.Errorf("reach %s -> %s: %v\n%s", src.Name, dst.Name, err, out)
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("reach %s -> %s does not say %q:\n%s", src.Name, dst.Name, w, out)
			}
		}
	}

	t.Run("a ClusterNetworkPolicy applied in a member cluster's API is enforced on every node of that cluster and explained", func(t *testing.T) {
		p := file("synced-cnp.yaml", syncedCNP)
		if out, err := l.KubeApplyFile(ctx, b.Name, p, false); err != nil {
			t.Fatalf("kubectl apply: %v\n%s", err, out)
		}
		t.Cleanup(func() { _, _ = l.KubeApplyFile(ctx, b.Name, p, true); _, _ = l.WaitEnforced(ctx, 30*time.Second) })
		eventually(t, "the synced policy in the federation", 30*time.Second, func() error {
			out, err := l.Fedctl(ctx, "policy", "list")
			if err == nil && !strings.Contains(out, "api-refuses-web") {
				err = errors.New("not synced yet")
			}
			return err
		})
		if _, err := l.WaitEnforced(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		for _, fam := range families {
			for _, api := range []lab.Pod{apiB, apiB2} {
				if err := blocked(webB, api, fam); err != nil {
					t.Errorf("IPv%d: %v (the Admin Deny of %s)", fam, err, b.Name)
				}
			}
			// Peers of a synced policy are its own cluster's pods; the
			// policy applies to its own cluster's pods.
			if err := allowedOver(ctx, l, webA, apiB, "tcp", fam); err != nil {
				t.Errorf("IPv%d: a web pod of %s is not a peer of %s's policy: %v", fam, a.Name, b.Name, err)
			}
			if err := allowedOver(ctx, l, webA, apiA, "tcp", fam); err != nil {
				t.Errorf("IPv%d: %s's pods are not subject to %s's policy: %v", fam, a.Name, b.Name, err)
			}
		}
		reach(webB, apiB, b, b, "Admin", "api-refuses-web", "no-web")
		if out, err := l.KubeApplyFile(ctx, b.Name, p, true); err != nil {
			t.Fatalf("kubectl delete: %v\n%s", err, out)
		}
		eventually(t, "the synced policy gone and traffic back", 30*time.Second, func() error {
			return l.ProbeFrom(ctx, webB.Name, "tcp", addrOf(apiB, 4), time.Second)
		})
	})

	t.Run("a federated Admin Deny overrides a namespace's NetworkPolicy allow, and its Pass hands the decision back", func(t *testing.T) {
		np := file("np.yaml", string(lab.DemoTiersNP))
		cnp := file("cnp.yaml", string(lab.DemoTiersCNP))
		if out, err := l.KubeApplyFile(ctx, b.Name, np, false); err != nil {
			t.Fatalf("kubectl apply: %v\n%s", err, out)
		}
		t.Cleanup(func() { _, _ = l.KubeApplyFile(ctx, b.Name, np, true); _, _ = l.WaitEnforced(ctx, 30*time.Second) })
		if out, err := l.Fedctl(ctx, "policy", "apply", "-f", cnp, "--wait", "--wait-timeout", "30s"); err != nil {
			t.Fatalf("apply --wait: %v\n%s", err, out)
		}
		t.Cleanup(func() { _, _ = l.Fedctl(ctx, "policy", "delete", "cnp/federated/api-guardrail", "--wait") })
		eventually(t, "the namespace's NetworkPolicy synced", 30*time.Second, func() error {
			_, err := l.Fedctl(ctx, "policy", "get", b.Name+"/demo/api-open")
			return err
		})
		if _, err := l.WaitEnforced(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if out, err := l.Fedctl(ctx, "policy", "list"); err != nil || !strings.Contains(out, "Admin") || !strings.Contains(out, "10") {
			t.Errorf("policy list shows no tier and priority: %v\n%s", err, out)
		}
		for _, fam := range families {
			// Deny over the namespace's allow, in both prod clusters.
			if err := blocked(webA, apiB, fam); err != nil {
				t.Errorf("IPv%d: %v", fam, err)
			}
			if err := blocked(webB, apiA, fam); err != nil {
				t.Errorf("IPv%d: %v", fam, err)
			}
			// Pass: the same cluster's web pods go to the NetworkPolicy
			// layer: cluster-b's allows; cluster-a has none, so default.
			if err := allowedOver(ctx, l, webB, apiB, "tcp", fam); err != nil {
				t.Errorf("IPv%d: passed to %s's NetworkPolicy, which allows: %v", fam, b.Name, err)
			}
			if err := allowedOver(ctx, l, webA, apiA, "tcp", fam); err != nil {
				t.Errorf("IPv%d: passed, no NetworkPolicy in %s: %v", fam, a.Name, err)
			}
		}
		reach(webA, apiB, a, b, "Admin", "api-guardrail", "no-other-pod")
		reach(webB, apiB, b, b, "same-cluster-web-to-the-namespace", "api-open")
	})
}
