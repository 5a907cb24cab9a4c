package lab

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// DemoTiersNP is the namespace owner's NetworkPolicy of the tiers step.
//
//go:embed demo-tiers-np.yaml
var DemoTiersNP []byte

// DemoTiersCNP is the platform team's federated ClusterNetworkPolicy of the tiers step.
//
//go:embed demo-tiers-cnp.yaml
var DemoTiersCNP []byte

// tiers plays the tiered-policy step: a namespace's NetworkPolicy allows
// its api pods from anywhere; an Admin-tier federated ClusterNetworkPolicy
// denies every pod but the same cluster's web pods, which it passes back to
// the namespace's policy to decide. Real packets, --wait and reach show it.
func (d *Demo) tiers(ctx context.Context, a, b Cluster, web, webB, api Pod, apiAddr string) error {
	np := filepath.Join(d.Lab.Dir, "demo-tiers-np.yaml")
	cnp := filepath.Join(d.Lab.Dir, "demo-tiers-cnp.yaml")
	if err := os.WriteFile(np, DemoTiersNP, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(cnp, DemoTiersCNP, 0o644); err != nil {
		return err
	}
	d.say("Tiered policy. %s's namespace owner opens the api pods to everyone with a NetworkPolicy, through %s's own API", b.Name, b.Name)
	fmt.Fprint(d.Out, indent(string(DemoTiersNP)))
	if err := d.kubeOp(ctx, "kube-apply", "--cluster", b.Name, "-f", np); err != nil {
		return err
	}
	if err := d.waitPolicy(ctx, b.Name+"/demo/api-open"); err != nil {
		return err
	}
	if err := d.probe(ctx, web.Name, b.Name+"/"+api.Name, apiAddr, true); err != nil {
		return err
	}
	d.say("The platform team's guardrail: an Admin-tier ClusterNetworkPolicy, federated to every prod cluster, --wait")
	fmt.Fprint(d.Out, indent(string(DemoTiersCNP)))
	if _, err := d.fedctl(ctx, "policy", "apply", "-f", cnp, "--wait"); err != nil {
		return err
	}
	if _, err := d.fedctl(ctx, "policy", "list"); err != nil {
		return err
	}
	d.say("The Admin Deny overrides the namespace's allow for %s's web pod; %s's own web pod is passed to the NetworkPolicy, which allows it", a.Name, b.Name)
	if err := d.probe(ctx, web.Name, b.Name+"/"+api.Name, apiAddr, false); err != nil {
		return err
	}
	if err := d.probe(ctx, webB.Name, b.Name+"/"+api.Name, apiAddr, true); err != nil {
		return err
	}
	dst := b.Name + "/demo/" + api.Name
	if _, err := d.fedctl(ctx, "reach", a.Name+"/demo/"+web.Name, dst, "--port", fmt.Sprint(AppPort)); err != nil && !denied(err) {
		fmt.Fprintf(d.Out, "    (reach: %v)\n", err)
	}
	if _, err := d.fedctl(ctx, "reach", b.Name+"/demo/"+webB.Name, dst, "--port", fmt.Sprint(AppPort)); err != nil {
		fmt.Fprintf(d.Out, "    (reach: %v)\n", err)
	}
	d.say("Remove the guardrail (--wait) and the namespace's policy decides alone again")
	if _, err := d.fedctl(ctx, "policy", "delete", "cnp/federated/api-guardrail", "--wait"); err != nil {
		return err
	}
	if err := d.probe(ctx, web.Name, b.Name+"/"+api.Name, apiAddr, true); err != nil {
		return err
	}
	return d.kubeOp(ctx, "kube-apply", "--delete", "--cluster", b.Name, "-f", np)
}

// waitPolicy waits until the federation stores a policy synced from a
// cluster and every node enforces it.
func (d *Demo) waitPolicy(ctx context.Context, key string) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := waitFor(wctx, "policy "+key+" to be synced", func() error {
		_, err := d.Lab.Fedctl(wctx, "policy", "get", key)
		return err
	}); err != nil {
		return err
	}
	_, err := d.Lab.WaitEnforced(ctx, 30*time.Second)
	return err
}
