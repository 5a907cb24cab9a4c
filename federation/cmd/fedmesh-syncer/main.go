// Command fedmesh-syncer publishes one Kubernetes cluster's endpoints, policies and exported services to the federation and writes imported services back.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/authclient"
	"github.com/fedmesh/fedmesh/federation/buildinfo"
	"github.com/fedmesh/fedmesh/federation/syncer"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

type options struct {
	kubeconfig   string
	cluster      string
	controlPlane string
	creds        authclient.Flags
	stateDir     string
	metricsAddr  string
	debounce     time.Duration
	maxDelay     time.Duration
	logLevel     string
}

func main() {
	var o options
	cmd := &cobra.Command{
		Use:          "fedmesh-syncer",
		Short:        "The fedmesh federation syncer for one member cluster",
		Version:      buildinfo.Version(),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, o)
		},
	}
	cmd.SetVersionTemplate(buildinfo.VersionTemplate())
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the member cluster (empty: in-cluster config)")
	f.StringVar(&o.cluster, "cluster", "", "this cluster's name in the federation (as registered with fedctl cluster register)")
	f.StringVar(&o.controlPlane, "controlplane", os.Getenv("FEDMESH_SERVER"), "comma-separated control-plane replica addresses (host:port)")
	o.creds.AddFlags(f)
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/fedmesh-syncer", "directory for the certificate a --join-token obtains (mode 0600)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9464", "address of the Prometheus /metrics endpoint (empty: off)")
	f.DurationVar(&o.maxDelay, "max-delay", 0, "hold a change up to this long to batch it with later ones (0: write at once; changes that arrive during a write always share the next one)")
	f.DurationVar(&o.debounce, "debounce", 0, "ignored: batching is adaptive")
	_ = f.MarkDeprecated("debounce", "batching is adaptive; use --max-delay to hold changes for larger batches")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	_ = cmd.MarkFlagRequired("cluster")
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("parse --log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	restCfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	addrs, err := replicaAddrs(o.controlPlane)
	if err != nil {
		return err
	}
	if err := authclient.Check(o.creds, authclient.Config{StateDir: o.stateDir, Name: "syncer"}); err != nil {
		return err
	}
	if o.creds.JoinToken != "" {
		if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
			return fmt.Errorf("create state dir %s: %w", o.stateDir, err)
		}
	}
	creds, err := authclient.Load(ctx, o.creds, authclient.Config{
		StateDir: o.stateDir, Name: "syncer", Want: auth.Syncer(o.cluster), Replicas: addrs, Logger: log,
	})
	if err != nil {
		return err
	}
	conn, err := dial(addrs, creds.DialOption())
	if err != nil {
		return err
	}
	defer conn.Close()
	// Renewal swaps the key pair under the open connection: the watch
	// stream is not reopened.
	go creds.Rotate(ctx, fedmeshv1.NewAuthServiceClient(conn), authclient.RotateOptions{Logger: log})

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s, err := syncer.New(syncer.Config{
		Cluster:      o.cluster,
		REST:         restCfg,
		ControlPlane: syncer.NewControlPlane(conn),
		Logger:       log,
		Registerer:   reg,
		MaxDelay:     o.maxDelay,
	})
	if err != nil {
		return err
	}
	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s (pick another with --metrics-addr): %w", o.metricsAddr, err)
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server", "err", err)
			}
		}()
		defer srv.Close()
	}
	// BGP: service advertisements, and Secret passwords pushed to every
	// replica (each holds them in memory only), so one connection each.
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	bs := &syncer.BGPSync{Cluster: o.cluster, Kube: kube, Adverts: fedmeshv1.NewBGPServiceClient(conn), Log: log, Informers: s.Informers()}
	for _, a := range addrs {
		rc, err := dial([]string{a}, creds.DialOption())
		if err != nil {
			return err
		}
		defer rc.Close()
		bs.Replicas = append(bs.Replicas, fedmeshv1.NewBGPServiceClient(rc))
	}
	go func() {
		if err := bs.Run(ctx); err != nil {
			log.Error("BGP sync stopped", "err", err)
		}
	}()
	log.Info("fedmesh-syncer starting", "cluster", o.cluster, "controlplane", o.controlPlane, "version", buildinfo.Version())
	return s.Run(ctx)
}

func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig and not running in a cluster: %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	return c, nil
}

func replicaAddrs(servers string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no control-plane address: set --controlplane or FEDMESH_SERVER")
	}
	return out, nil
}

// dial connects to every listed replica; gRPC picks one and fails over.
func dial(servers []string, creds grpc.DialOption) (*grpc.ClientConn, error) {
	var addrs []resolver.Address
	for _, s := range servers {
		// TLS verifies each replica by its own host, not by the
		// resolver's "control-plane" authority.
		host, _, err := net.SplitHostPort(s)
		if err != nil {
			return nil, fmt.Errorf("--controlplane %q: want host:port: %w", s, err)
		}
		addrs = append(addrs, resolver.Address{Addr: s, ServerName: host})
	}
	r := manual.NewBuilderWithScheme("fedmesh-syncer")
	r.InitialState(resolver.State{Addresses: addrs})
	cc, err := grpc.NewClient(r.Scheme()+":///control-plane", grpc.WithResolvers(r), creds)
	if err != nil {
		return nil, fmt.Errorf("connect to control plane %s: %w", strings.Join(servers, ","), err)
	}
	return cc, nil
}
