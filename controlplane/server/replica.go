// Package server owns the control plane's serving side: the Raft node around
// the store's FSM (raft-boltdb log on disk, file snapshots, TCP transport),
// the gRPC services of the fedmesh API with validation at the edge, leader
// forwarding of writes, read consistency, watch fan-out, membership,
// health, reflection and Prometheus metrics.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/flowstore"
	"github.com/fedmesh/fedmesh/controlplane/store"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Peer is a replica of the initial configuration.
type Peer struct {
	ID       string
	RaftAddr string
	GRPCAddr string // optional; learned when the peer leads otherwise
}

// Config configures one replica.
type Config struct {
	NodeID   string
	DataDir  string
	RaftAddr string // host:port; port 0 picks one
	GRPCAddr string // host:port; port 0 picks one
	// MetricsAddr serves /metrics when set.
	MetricsAddr string
	// EnablePprof adds Go's /debug/pprof/ handlers to the metrics listener,
	// for profiling a live replica (off by default: a profile reveals
	// internals and costs CPU while it runs).
	EnablePprof bool
	// BootstrapPeers, when set and the data dir holds no Raft state, form
	// the initial configuration. Every initial replica gets the same list.
	BootstrapPeers []Peer
	// EventLogSize bounds the events kept for watchers.
	EventLogSize int
	// SnapshotThreshold is how many log entries trigger a Raft snapshot.
	SnapshotThreshold uint64
	// SnapshotInterval is how often Raft checks the threshold.
	SnapshotInterval time.Duration
	// FaultInjection enables SetIsolated (tests only).
	FaultInjection bool
	// WrapRaftTransport, when set, wraps the replica's Raft transport
	// (tests only: controlplane/inproc partitions, drops and delays Raft
	// messages with it). The wrapper must implement raft.WithClose and
	// raft.WithPreVote when the transport it wraps does.
	WrapRaftTransport func(raft.Transport) raft.Transport
	// RaftTimeout scales Raft's heartbeat and election timeouts (default
	// 500ms, tuned for a LAN).
	RaftTimeout time.Duration
	// ApplyTimeout bounds how long a write waits to enter the log.
	ApplyTimeout time.Duration
	Logger       *slog.Logger
	// TLS serves the API over mutual TLS 1.3 with authorization, and runs
	// Raft and leader forwarding over mutual TLS between replicas.
	TLS *TLSConfig
	// Insecure serves plaintext without authentication (development
	// only). Start refuses a Config with neither TLS nor Insecure.
	Insecure bool
	// WriteLimits bound each principal's writes (writelimit.go); nil means
	// DefaultWriteLimits, an empty map no limits.
	WriteLimits WriteLimits
	// MaxConcurrentSnapshots bounds the watch snapshots this replica builds
	// and sends at once (default 8; negative: no bound). A snapshot holds
	// every matching object until it is sent; when every agent reconnects
	// at once (a replica restart), unbounded they all sit in memory
	// together.
	MaxConcurrentSnapshots int
	// Flows bounds the replica's flow store (flows.go).
	Flows FlowConfig
	// UIAddr serves the service-graph page over HTTPS when set (needs
	// TLS); UIURL is how browsers reach it (default https://UIAddr).
	UIAddr, UIURL string
	// Services are the clusterset CIDRs and liveness timeouts the replica
	// applies while it leads (liveness.go; zero values: defaults).
	Services ServicesConfig
}

// raftLogCache is how many of the newest Raft entries stay in memory (up to
// ~100 KiB each for a batch of 100 endpoints).
const raftLogCache = 256

// Replica is one running control-plane replica.
type Replica struct {
	cfg     Config
	log     *slog.Logger
	fsm     *store.FSM
	raft    *raft.Raft
	bolt    *raftboltdb.BoltStore
	trans   raft.Transport
	fault   *faultTransport
	grpc    *grpc.Server
	grpcLis net.Listener
	metrics *metrics
	writes  *writeLimiter
	// snapshots holds a token per watch snapshot being built or sent.
	snapshots chan struct{}
	httpSrv   *http.Server
	httpLis   net.Listener
	core      *Core
	flows     *flowstore.Store
	dns       *flowstore.DNSStore
	ui        *uiServer
	sec       *security
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	stopOnce  sync.Once
}

// Start opens the data dir, starts Raft and serves gRPC (and metrics).
func Start(cfg Config) (*Replica, error) {
	if cfg.NodeID == "" || cfg.DataDir == "" || cfg.RaftAddr == "" || cfg.GRPCAddr == "" {
		return nil, errors.New("start replica: node ID, data dir, raft address and gRPC address are required")
	}
	if (cfg.TLS == nil) == !cfg.Insecure {
		return nil, errors.New("start replica: give TLS credentials (CA, replica certificate and key), or Insecure for a development setup, not both")
	}
	if cfg.UIAddr != "" && cfg.TLS == nil {
		return nil, errors.New("start replica: the service-graph page (UI address) needs TLS: browsers sign in over HTTPS with the replica's certificate")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.EventLogSize == 0 {
		cfg.EventLogSize = store.DefaultEventLogSize
	}
	if cfg.RaftTimeout == 0 {
		cfg.RaftTimeout = 500 * time.Millisecond
	}
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = 10 * time.Second
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", cfg.DataDir, err)
	}
	r := &Replica{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID)}
	ok := false
	defer func() {
		if !ok {
			r.Stop()
		}
	}()

	var err error
	if cfg.TLS != nil {
		if r.sec, err = loadSecurity(cfg.TLS); err != nil {
			return nil, fmt.Errorf("start replica: %w", err)
		}
	}
	if r.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("listen for gRPC on %s: %w", cfg.GRPCAddr, err)
	}
	// Every write is still fsynced (NoSync stays off: an acknowledged write
	// is on disk on a quorum). NoFreelistSync spares each commit writing
	// bbolt's free-page list, which a log that appends and truncates keeps
	// long; it is rebuilt by a scan when the file is opened. The map
	// freelist allocates in O(1) instead of scanning an array, and a large
	// initial mmap (address space, not memory) avoids remapping — which
	// blocks every reader and writer — while the log grows.
	boltOpts := &bbolt.Options{NoFreelistSync: true, FreelistType: bbolt.FreelistMapType, InitialMmapSize: 1 << 30}
	if r.bolt, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db"), BoltOptions: boltOpts}); err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", filepath.Join(cfg.DataDir, "raft.db"), err)
	}
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft." + cfg.NodeID, Level: hclog.Warn, Output: os.Stderr})
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog)
	if err != nil {
		return nil, fmt.Errorf("open snapshot store in %s: %w", cfg.DataDir, err)
	}
	addr, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
	if err != nil {
		return nil, fmt.Errorf("resolve raft address %s: %w", cfg.RaftAddr, err)
	}
	var nt *raft.NetworkTransport
	if r.sec != nil {
		var advertise net.Addr = addr
		if addr.Port == 0 {
			advertise = nil
		}
		srv, cli := auth.ReplicaTLS(r.sec.pool, r.sec.cert)
		layer, err := auth.NewTLSStreamLayer(cfg.RaftAddr, advertise, srv, cli)
		if err != nil {
			return nil, err
		}
		nt = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: layer, MaxPool: 8, Timeout: 10 * time.Second, Logger: hlog})
	} else if nt, err = raft.NewTCPTransportWithLogger(cfg.RaftAddr, addr, 8, 10*time.Second, hlog); err != nil {
		return nil, fmt.Errorf("listen for raft on %s: %w", cfg.RaftAddr, err)
	}
	r.trans = nt
	if cfg.FaultInjection {
		r.fault = newFaultTransport(nt)
		r.trans = r.fault
	}
	if cfg.WrapRaftTransport != nil {
		r.trans = cfg.WrapRaftTransport(r.trans)
	}

	r.fsm = store.NewFSM(store.WithEventLogSize(cfg.EventLogSize))
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = cfg.RaftTimeout
	rc.ElectionTimeout = cfg.RaftTimeout
	// A leader steps down when it has not heard from a quorum for this
	// long. Reads never rely on the lease (they go through a barrier), so
	// it only decides how soon a cut-off leader gives up; half the heartbeat
	// timeout made a busy leader on a loaded machine step down mid-stream.
	rc.LeaderLeaseTimeout = cfg.RaftTimeout
	rc.CommitTimeout = 5 * time.Millisecond
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 512
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
		rc.TrailingLogs = cfg.SnapshotThreshold
	}
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	notify := make(chan bool, 16)
	rc.NotifyCh = notify
	// Raft reads every entry back from the log store to apply it (followers)
	// and to send it (the leader); a cache of the newest entries spares
	// bbolt reads and msgpack decoding on that path. Writes go through to
	// bbolt before StoreLogs returns, as without the cache.
	logs, err := raft.NewLogCache(raftLogCache, r.bolt)
	if err != nil {
		return nil, fmt.Errorf("create raft log cache: %w", err)
	}
	if r.raft, err = raft.NewRaft(rc, r.fsm, logs, r.bolt, snaps, r.trans); err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	if len(cfg.BootstrapPeers) > 0 {
		has, err := raft.HasExistingState(r.bolt, r.bolt, snaps)
		if err != nil {
			return nil, fmt.Errorf("inspect raft state in %s: %w", cfg.DataDir, err)
		}
		if !has {
			var conf raft.Configuration
			for _, p := range cfg.BootstrapPeers {
				conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)})
			}
			if err := r.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
				return nil, fmt.Errorf("bootstrap raft: %w", err)
			}
		}
	}

	r.metrics = newMetrics(r)
	if cfg.WriteLimits == nil {
		cfg.WriteLimits = DefaultWriteLimits()
	}
	r.writes = newWriteLimiter(cfg.WriteLimits, time.Now)
	switch {
	case cfg.MaxConcurrentSnapshots == 0:
		r.snapshots = make(chan struct{}, 8)
	case cfg.MaxConcurrentSnapshots > 0:
		r.snapshots = make(chan struct{}, cfg.MaxConcurrentSnapshots)
	}
	r.metrics.reg.MustRegister(r.writes.limited)
	r.core = newCore(r)
	if r.sec != nil {
		guard := auth.NewGuard(auth.WithLogger(r.log))
		opts := append(guard.ServerOptions(), grpc.MaxSendMsgSize(64<<20), grpc.ForceServerCodecV2(newCodec()),
			grpc.Creds(credentials.NewTLS(auth.ServerTLS(r.sec.pool, r.sec.cert, r.sec.allowJoin))))
		r.grpc = grpc.NewServer(opts...)
	} else {
		r.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20), grpc.ForceServerCodecV2(newCodec()))
	}
	registerServices(r.grpc, r.core)
	if r.sec != nil && r.sec.ca != nil {
		fedmeshv1.RegisterAuthServiceServer(r.grpc, auth.NewAuthService(r.sec.ca, raftLedger{r.core}))
	}
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(r.grpc, hs)
	reflection.Register(r.grpc)

	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.startFlows(ctx)
	r.startDNS(ctx)
	if err := r.startUI(); err != nil {
		r.Stop()
		return nil, err
	}
	r.wg.Add(5)
	go func() {
		defer r.wg.Done()
		r.core.logFormats(ctx)
	}()
	go func() {
		defer r.wg.Done()
		r.core.livenessLoop(ctx)
	}()
	go func() {
		defer r.wg.Done()
		r.core.reach.run(ctx)
	}()
	go func() {
		defer r.wg.Done()
		if err := r.grpc.Serve(r.grpcLis); err != nil {
			r.log.Error("grpc server stopped", "err", err)
		}
	}()
	go func() {
		defer r.wg.Done()
		r.core.leadership(ctx, notify)
	}()
	if cfg.MetricsAddr != "" {
		if r.httpLis, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return nil, fmt.Errorf("listen for metrics on %s: %w", cfg.MetricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(r.metrics.reg, promhttp.HandlerOpts{}))
		if cfg.EnablePprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		r.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := r.httpSrv.Serve(r.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				r.log.Error("metrics server stopped", "err", err)
			}
		}()
	}
	ok = true
	r.log.Info("replica started", "raft", cfg.RaftAddr, "grpc", r.GRPCAddr(), "dataDir", cfg.DataDir)
	return r, nil
}

// GRPCAddr is the address gRPC listens on.
func (r *Replica) GRPCAddr() string { return r.grpcLis.Addr().String() }

// MetricsAddr is the address /metrics listens on, or "".
func (r *Replica) MetricsAddr() string {
	if r.httpLis == nil {
		return ""
	}
	return r.httpLis.Addr().String()
}

// FSM is the replica's store.
func (r *Replica) FSM() *store.FSM { return r.fsm }

// Raft is the replica's Raft node.
func (r *Replica) Raft() *raft.Raft { return r.raft }

// SetIsolated cuts the replica off from its Raft peers (or heals it).
func (r *Replica) SetIsolated(on bool) error {
	if r.fault == nil {
		return errors.New("fault injection is not enabled on this replica")
	}
	r.fault.isolated.Store(on)
	return nil
}

// Stop shuts the replica down; safe to call more than once.
func (r *Replica) Stop() {
	r.stopOnce.Do(func() {
		if r.cancel != nil {
			r.cancel()
		}
		if r.grpc != nil {
			stopped := make(chan struct{})
			go func() { r.grpc.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(2 * time.Second):
				r.grpc.Stop()
			}
		} else if r.grpcLis != nil {
			r.grpcLis.Close()
		}
		r.ui.close()
		if r.httpSrv != nil {
			r.httpSrv.Close()
		}
		if r.core != nil {
			r.core.close()
		}
		if r.raft != nil {
			if err := r.raft.Shutdown().Error(); err != nil {
				r.log.Warn("raft shutdown", "err", err)
			}
		}
		if r.core != nil {
			r.core.raftStopped()
		}
		if c, ok := r.trans.(raft.WithClose); ok {
			c.Close()
		}
		if r.bolt != nil {
			r.bolt.Close()
		}
		r.wg.Wait()
	})
}

func registerServices(s *grpc.Server, c *Core) {
	fedmeshv1.RegisterClusterServiceServer(s, &clusterService{c: c})
	fedmeshv1.RegisterNodeServiceServer(s, &nodeService{c: c})
	fedmeshv1.RegisterEndpointServiceServer(s, &endpointService{c: c})
	fedmeshv1.RegisterMultiClusterServiceServer(s, &mcsService{c: c})
	fedmeshv1.RegisterPolicyServiceServer(s, &policyService{c: c})
	fedmeshv1.RegisterWatchServiceServer(s, &watchService{c: c})
	fedmeshv1.RegisterReachServiceServer(s, &reachService{c: c})
	fedmeshv1.RegisterControlPlaneServiceServer(s, &adminService{c: c})
	fedmeshv1.RegisterAuditServiceServer(s, &auditService{c: c})
	fedmeshv1.RegisterBGPServiceServer(s, &bgpService{c: c})
	fedmeshv1.RegisterClusterPolicyServiceServer(s, &clusterPolicyService{c: c})
	fedmeshv1.RegisterFlowServiceServer(s, &flowService{c: c})
	fedmeshv1.RegisterStagedPolicyServiceServer(s, &stagedPolicyService{c: c})
	fedmeshv1.RegisterUIServiceServer(s, &uiService{c: c})
}
