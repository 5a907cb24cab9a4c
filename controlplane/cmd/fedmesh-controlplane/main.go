// Command fedmesh-controlplane runs one replica of the Raft-replicated fedmesh control plane.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fedmesh/fedmesh/controlplane/server"
	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/buildinfo"
)

func main() {
	var (
		cfg             server.Config
		peers           string
		insecureDev     bool
		faultInjection  bool
		gcPercent       int
		logLevel        string
		tlsDir          string
		tlsCfg          server.TLSConfig
		clustersetCIDRs []string
	)
	cmd := &cobra.Command{
		Use:          "fedmesh-controlplane",
		Short:        "One replica of the fedmesh control plane (Raft store, gRPC API, watch fan-out)",
		Version:      buildinfo.Version(),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, v := range clustersetCIDRs {
				p, err := netip.ParsePrefix(v)
				if err != nil || p != p.Masked() {
					return fmt.Errorf("parse --clusterset-cidrs %q: want a CIDR without host bits, e.g. %s", v, server.DefaultClustersetCIDRs[0])
				}
				cfg.Services.ClustersetCIDRs = append(cfg.Services.ClustersetCIDRs, p)
			}
			tls, err := tlsConfig(insecureDev, tlsDir, tlsCfg)
			if err != nil {
				return err
			}
			cfg.TLS, cfg.Insecure = tls, insecureDev
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("parse --log-level: %w", err)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			if cfg.BootstrapPeers, err = parsePeers(peers); err != nil {
				return err
			}
			cfg.FaultInjection = faultInjection
			if err := setGCPercent(gcPercent, cmd.Flags().Changed("gc-percent")); err != nil {
				return err
			}
			if cfg.EnablePprof && cfg.MetricsAddr == "" {
				return fmt.Errorf("--enable-pprof serves on --metrics-addr; set --metrics-addr too")
			}
			return run(cmd.Context(), cfg)
		},
	}
	cmd.SetVersionTemplate(buildinfo.VersionTemplate())
	f := cmd.Flags()
	f.StringVar(&cfg.NodeID, "node-id", "", "this replica's Raft server ID (unique, stable across restarts)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the Raft log (raft.db) and snapshots")
	f.StringVar(&cfg.RaftAddr, "raft-addr", "127.0.0.1:7000", "host:port of the Raft transport; other replicas dial it")
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", "127.0.0.1:9000", "host:port of the fedmesh gRPC API")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "host:port serving Prometheus /metrics (empty: off)")
	f.StringVar(&cfg.UIAddr, "ui-addr", "", "host:port serving the service-graph page over HTTPS with the replica's certificate (empty: off; needs TLS). `fedctl flows ui` prints a sign-in link")
	f.StringVar(&cfg.UIURL, "ui-url", "", "how browsers reach --ui-addr, e.g. https://fedmesh.example:8443 (default https://<ui-addr>)")
	f.BoolVar(&cfg.EnablePprof, "enable-pprof", false, "also serve Go's /debug/pprof/ on --metrics-addr, to profile a live replica")
	f.StringVar(&peers, "bootstrap-peers", "", "initial replicas as id=raft_addr[/grpc_addr],...; used only when the data dir is empty. Give every initial replica the same list")
	f.IntVar(&cfg.EventLogSize, "event-log-size", store.DefaultEventLogSize, "events kept in memory for watchers; a watcher further behind gets a snapshot")
	f.Uint64Var(&cfg.SnapshotThreshold, "snapshot-threshold", 8192, "Raft log entries between snapshots")
	f.DurationVar(&cfg.SnapshotInterval, "snapshot-interval", 2*time.Minute, "how often to check --snapshot-threshold")
	var defCIDRs []string
	for _, p := range server.DefaultClustersetCIDRs {
		defCIDRs = append(defCIDRs, p.String())
	}
	f.StringSliceVar(&clustersetCIDRs, "clusterset-cidrs", defCIDRs, "CIDRs ClusterSetIPs are allocated from, at most one IPv4 and one IPv6; must not overlap any cluster's pod or service CIDRs (the leader commits them)")
	f.DurationVar(&cfg.Services.ClusterTimeout, "cluster-timeout", server.DefaultClusterTimeout, "how long a cluster's syncer may miss heartbeats before its service backends are withdrawn")
	f.DurationVar(&cfg.Services.NodeTimeout, "node-timeout", server.DefaultNodeTimeout, "how long a node may miss status reports before its service backends are withdrawn")
	f.BoolVar(&insecureDev, "insecure-dev", false, "serve plaintext gRPC and Raft without authentication (development only; excludes the TLS flags)")
	f.StringVar(&tlsDir, "tls-dir", "", "directory holding ca.crt (+ ca.key to sign join/renew requests), replica.crt and replica.key")
	f.StringVar(&tlsCfg.CAFile, "ca-file", "", "CA certificate (default <tls-dir>/ca.crt); a ca.key (mode 0600) next to it enables join tokens")
	f.StringVar(&tlsCfg.CertFile, "cert-file", "", "this replica's certificate, from 'fedctl ca issue-replica' (default <tls-dir>/replica.crt)")
	f.StringVar(&tlsCfg.KeyFile, "key-file", "", "this replica's key (default <tls-dir>/replica.key)")
	f.IntVar(&gcPercent, "gc-percent", defaultGCPercent, "Go GC target, as GOGC: how far the heap grows over the live heap before a collection. GOGC in the environment wins unless this flag is given; cap memory with GOMEMLIMIT")
	f.BoolVar(&faultInjection, "fault-injection", false, "tests only: SIGUSR1 cuts this replica off from its Raft peers, SIGUSR2 heals it")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.DurationVar(&cfg.RaftTimeout, "raft-timeout", 500*time.Millisecond, "Raft heartbeat and election timeout")
	_ = f.MarkHidden("fault-injection")
	_ = cmd.MarkFlagRequired("node-id")
	_ = cmd.MarkFlagRequired("data-dir")
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}

// tlsConfig resolves the TLS flags: --insecure-dev alone, or credentials
// from --tls-dir and/or the file flags.
func tlsConfig(insecureDev bool, dir string, c server.TLSConfig) (*server.TLSConfig, error) {
	given := dir != "" || c.CAFile != "" || c.CertFile != "" || c.KeyFile != ""
	if insecureDev {
		if given {
			return nil, errors.New("--insecure-dev excludes --tls-dir, --ca-file, --cert-file and --key-file")
		}
		return nil, nil
	}
	def := func(v *string, name string) {
		if *v == "" && dir != "" {
			*v = filepath.Join(dir, name)
		}
	}
	def(&c.CAFile, "ca.crt")
	def(&c.CertFile, "replica.crt")
	def(&c.KeyFile, "replica.key")
	if c.CAFile == "" || c.CertFile == "" || c.KeyFile == "" {
		return nil, errors.New("no TLS credentials: give --tls-dir (or --ca-file, --cert-file and --key-file; see 'fedctl ca'), or --insecure-dev on a development setup")
	}
	return &c, nil
}

func parsePeers(s string) ([]server.Peer, error) {
	var out []server.Peer
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		id, addrs, ok := strings.Cut(p, "=")
		if !ok || id == "" || addrs == "" {
			return nil, fmt.Errorf("parse --bootstrap-peers entry %q: want id=raft_addr[/grpc_addr]", p)
		}
		raftAddr, grpcAddr, _ := strings.Cut(addrs, "/")
		out = append(out, server.Peer{ID: id, RaftAddr: raftAddr, GRPCAddr: grpcAddr})
	}
	return out, nil
}

func run(ctx context.Context, cfg server.Config) error {
	if ctx == nil {
		ctx = context.Background()
	}
	r, err := server.Start(cfg)
	if err != nil {
		return err
	}
	defer r.Stop()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGUSR2)
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-sigs:
			switch s {
			case syscall.SIGUSR1, syscall.SIGUSR2:
				if err := r.SetIsolated(s == syscall.SIGUSR1); err != nil {
					cfg.Logger.Warn("fault injection signal ignored", "err", err)
				} else {
					cfg.Logger.Warn("fault injection", "isolated", s == syscall.SIGUSR1)
				}
			default:
				cfg.Logger.Info("shutting down", "signal", s.String())
				return nil
			}
		}
	}
}

// defaultGCPercent trades memory for CPU. A replica's live heap (the
// store) is small next to what every write allocates on its way through
// gRPC, Raft and bbolt, so at Go's default of 100 the collector runs
// often and took about 15% of a loaded leader's CPU; at 200 it runs half
// as often, for a heap of up to three times the live one instead of two.
// Operators who must bound memory set GOMEMLIMIT, under which the
// collector works harder as the limit nears (the Go GC guide's advice).
const defaultGCPercent = 200

// setGCPercent applies --gc-percent, unless GOGC is set in the environment
// and the flag was not given: an explicit operator choice wins.
func setGCPercent(pct int, flagGiven bool) error {
	if pct < 25 {
		return fmt.Errorf("--gc-percent %d: must be at least 25", pct)
	}
	if !flagGiven && os.Getenv("GOGC") != "" {
		return nil
	}
	debug.SetGCPercent(pct)
	return nil
}
