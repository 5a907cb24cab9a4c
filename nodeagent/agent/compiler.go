package agent

import (
	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// PolicyCompiler is the Compiler port over federation/policy's incremental
// Engine: the same compiler the control plane's Reach runs, so what
// `fedctl reach` explains is what this node enforces.
type PolicyCompiler struct {
	e *policy.Engine
}

// NewPolicyCompiler compiles the endpoints of one node of one cluster.
func NewPolicyCompiler(cluster, node string) *PolicyCompiler {
	return &PolicyCompiler{e: policy.NewEngine(policy.WithNode(cluster, node))}
}

func (c *PolicyCompiler) UpsertCluster(cl *fedmeshv1.Cluster) { c.e.UpsertCluster(cl) }
func (c *PolicyCompiler) DeleteCluster(name string)           { c.e.DeleteCluster(name) }
func (c *PolicyCompiler) UpsertEndpoint(ep *fedmeshv1.Endpoint) {
	c.e.UpsertEndpoint(ep)
}
func (c *PolicyCompiler) DeleteEndpoint(k policy.EndpointKey)    { c.e.DeleteEndpoint(k) }
func (c *PolicyCompiler) UpsertPolicy(p *fedmeshv1.Policy) error { return c.e.UpsertPolicy(p) }
func (c *PolicyCompiler) DeletePolicy(k policy.PolicyKey)        { c.e.DeletePolicy(k) }

// Recompute returns the rules of the local endpoints that changed.
func (c *PolicyCompiler) Recompute() (map[policy.EndpointKey]policy.EndpointRules, []policy.EndpointKey) {
	ch := c.e.Recompute()
	updated := make(map[policy.EndpointKey]policy.EndpointRules, len(ch.Updated))
	for _, k := range ch.Updated {
		if r, ok := c.e.Rules(k); ok {
			updated[k] = r.Rules
		}
	}
	return updated, ch.Removed
}
