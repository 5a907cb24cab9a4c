package main

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
)

func TestNameFlagsValidateAndMapToTheConfig(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		errHas string
		check  func(t *testing.T, c agent.NamePolicyConfig)
	}{
		{name: "defaults refuse, floor at 30s, Cilium's per-name limit", check: func(t *testing.T, c agent.NamePolicyConfig) {
			if c.ResolveDenied || c.MinTTL != 30*time.Second || c.MaxAddrsPerName != 1000 || c.MaxAddrsPerPod != 10000 ||
				strings.Join(c.ExemptZones, ",") != "cluster.local,clusterset.local" {
				t.Errorf("config %+v", c)
			}
		}},
		{name: "refusing off resolves denied names", args: []string{"--dns-refuse-denied=false"}, check: func(t *testing.T, c agent.NamePolicyConfig) {
			if !c.ResolveDenied {
				t.Error("ResolveDenied false")
			}
		}},
		{name: "a zero floor is no floor", args: []string{"--dns-min-ttl=0"}, check: func(t *testing.T, c agent.NamePolicyConfig) {
			if c.MinTTL >= 0 {
				t.Errorf("MinTTL %s, want negative (none)", c.MinTTL)
			}
		}},
		{name: "no exempt zones", args: []string{"--dns-exempt-zones="}, check: func(t *testing.T, c agent.NamePolicyConfig) {
			if c.ExemptZones == nil || len(c.ExemptZones) != 0 {
				t.Errorf("ExemptZones %q, want empty, not the default", c.ExemptZones)
			}
		}},
		{name: "negative floor", args: []string{"--dns-min-ttl=-1s"}, errHas: "--dns-min-ttl"},
		{name: "zero per-name limit", args: []string{"--dns-max-ips-per-name=0"}, errHas: "--dns-max-ips-per-name"},
		{name: "zero per-pod limit", args: []string{"--dns-max-ips-per-pod=0"}, errHas: "--dns-max-ips-per-pod"},
		{name: "the root as exempt zone", args: []string{"--dns-exempt-zones=cluster.local,."}, errHas: "would exempt every name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n nameFlags
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			n.addFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := n.validate()
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, n.config())
		})
	}
}

// learnRec is the in-memory dataplane with its Learn calls recorded.
type learnRec struct {
	*dataplane.Memory
	got []dataplane.LearnedAddr
}

func (l *learnRec) Learn(ctx context.Context, addrs []dataplane.LearnedAddr) error {
	l.got = append(l.got, addrs...)
	return l.Memory.Learn(ctx, addrs)
}

func TestOpenNamePolicyLearnsTheJournalAgainBeforeServing(t *testing.T) {
	dir := t.TempDir()
	j, err := agent.OpenJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	live := dataplane.LearnedAddr{Endpoint: "c1/shop/a", Addr: netip.MustParseAddr("192.0.2.1"), Name: "api.example.com", Expires: time.Now().Add(time.Hour).Round(0)}
	gone := dataplane.LearnedAddr{Endpoint: "c1/shop/a", Addr: netip.MustParseAddr("192.0.2.2"), Name: "api.example.com", Expires: time.Now().Add(-time.Minute)}
	if err := j.Append([]dataplane.LearnedAddr{live, gone}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	o := &options{stateDir: dir, dataplane: "memory", names: defaultNameFlags()}
	dp := &learnRec{Memory: dataplane.NewMemory()}
	np, closeNames, err := openNamePolicy(context.Background(), o, dp, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer closeNames()
	if len(dp.got) != 1 || dp.got[0].Addr != live.Addr || !dp.got[0].Expires.Equal(live.Expires) {
		t.Errorf("learned %v at start, want only the live entry with its expiry", dp.got)
	}
	select {
	case <-np.Ready():
		t.Error("ready before the agent named its pods")
	default:
	}
}

// notLearner is a dataplane without Learn.
type notLearner struct{ agent.Dataplane }

func TestOpenNamePolicyRefusesADataplaneThatCannotLearn(t *testing.T) {
	o := &options{stateDir: t.TempDir(), dataplane: "other", names: defaultNameFlags()}
	_, _, err := openNamePolicy(context.Background(), o, notLearner{}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "cannot learn DNS answers") {
		t.Errorf("err = %v, want one saying the dataplane cannot learn", err)
	}
}
