package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
)

// Policy by DNS name (ClusterNetworkPolicy domainNames) rides on the
// node-local resolver (--dns-listen): its hooks refuse names a pod's rules
// do not allow and have the dataplane learn the answers' addresses before
// the pod sees them (agent.NamePolicy). What pods learned is journaled in
// --state-dir and learned again, with its original expiry, before the
// resolver serves after a restart.

// nameFlags are policy by name's flags.
type nameFlags struct {
	refuseDenied bool
	minTTL       time.Duration
	maxPerName   int
	maxPerPod    int
	exemptZones  []string
}

// defaultNameFlags are the flags' defaults.
func defaultNameFlags() nameFlags {
	return nameFlags{refuseDenied: true, minTTL: agent.DefaultMinTTL, maxPerName: agent.DefaultMaxAddrsPerName,
		maxPerPod: agent.DefaultMaxAddrsPerPod, exemptZones: agent.DefaultExemptZones}
}

func (n *nameFlags) addFlags(f *pflag.FlagSet) {
	d := defaultNameFlags()
	f.BoolVar(&n.refuseDenied, "dns-refuse-denied", d.refuseDenied, "answer REFUSED when a pod with domainNames egress rules asks a name none of them allows (false: answer it as usual; its addresses stay closed)")
	f.DurationVar(&n.minTTL, "dns-min-ttl", d.minTTL, "least time an allowed answer's addresses stay open for the pod, whatever the answer's TTL (0: no floor)")
	f.IntVar(&n.maxPerName, "dns-max-ips-per-name", d.maxPerName, "most addresses one pod holds for one name; over it the oldest go (fedmesh_dns_learn_limited_total{limit=\"name\"})")
	f.IntVar(&n.maxPerPod, "dns-max-ips-per-pod", d.maxPerPod, "most (address, name) entries one pod holds; over it the oldest go (fedmesh_dns_learn_limited_total{limit=\"pod\"})")
	f.StringSliceVar(&n.exemptZones, "dns-exempt-zones", d.exemptZones, "the cluster's own zones: never refused nor learned (in-cluster names are reached by identity rules; pods walk their search path through them)")
}

func (n *nameFlags) validate() error {
	var errs []error
	if n.minTTL < 0 {
		errs = append(errs, fmt.Errorf("--dns-min-ttl %s: want 0 (no floor) or more", n.minTTL))
	}
	if n.maxPerName < 1 {
		errs = append(errs, fmt.Errorf("--dns-max-ips-per-name %d: want at least 1", n.maxPerName))
	}
	if n.maxPerPod < 1 {
		errs = append(errs, fmt.Errorf("--dns-max-ips-per-pod %d: want at least 1", n.maxPerPod))
	}
	for _, z := range n.exemptZones {
		if strings.Trim(strings.TrimSpace(z), ".") == "" {
			errs = append(errs, fmt.Errorf("--dns-exempt-zones: empty zone %q would exempt every name", z))
		}
	}
	return errors.Join(errs...)
}

func (n *nameFlags) config() agent.NamePolicyConfig {
	cfg := agent.NamePolicyConfig{
		ResolveDenied: !n.refuseDenied, MinTTL: n.minTTL, ExemptZones: n.exemptZones,
		MaxAddrsPerName: n.maxPerName, MaxAddrsPerPod: n.maxPerPod,
	}
	if cfg.MinTTL == 0 {
		cfg.MinTTL = -1 // the flag's 0 is "no floor"; the config's 0 the default
	}
	if cfg.ExemptZones == nil {
		cfg.ExemptZones = []string{}
	}
	return cfg
}

// openNamePolicy builds policy by name over the dataplane and learns again
// what the journal in stateDir holds, before the resolver serves.
func openNamePolicy(ctx context.Context, o *options, dp agent.Dataplane, reg prometheus.Registerer, log *slog.Logger) (*agent.NamePolicy, func(), error) {
	learner, ok := dp.(agent.Learner)
	if !ok {
		return nil, nil, fmt.Errorf("the %s dataplane cannot learn DNS answers; policy by DNS name needs one that can", o.dataplane)
	}
	j, err := agent.OpenJournal(o.stateDir)
	if err != nil {
		return nil, nil, err
	}
	np, err := agent.NewNamePolicy(o.names.config(), learner, j, reg, nil, log)
	if err != nil {
		j.Close()
		return nil, nil, err
	}
	n, err := np.Restore(ctx)
	if err != nil {
		j.Close()
		return nil, nil, fmt.Errorf("restore the learned DNS addresses from %s: %w", j.Path(), err)
	}
	log.Info("policy by DNS name ready", "restored", n, "journal", j.Path())
	return np, func() { j.Close() }, nil
}

// serveDNSWhenReady serves the resolver once the agent published the local
// endpoints: before that it could not tell a pod with name rules from any
// other client, and pods' DNS fails closed (unanswered) meanwhile.
func serveDNSWhenReady(ctx context.Context, srv *dns.Server, np *agent.NamePolicy, log *slog.Logger) {
	select {
	case <-np.Ready():
	case <-ctx.Done():
		return
	}
	serveDNS(ctx, srv, log)
}
