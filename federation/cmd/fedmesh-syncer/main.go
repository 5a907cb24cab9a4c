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
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/fedmesh/fedmesh/federation/buildinfo"
	"github.com/fedmesh/fedmesh/federation/syncer"
)

type options struct {
	kubeconfig   string
	cluster      string
	controlPlane string
	insecureDev  bool
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
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the member cluster (empty: in-cluster config)")
	f.StringVar(&o.cluster, "cluster", "", "this cluster's name in the federation (as registered with fedctl cluster register)")
	f.StringVar(&o.controlPlane, "controlplane", os.Getenv("FEDMESH_SERVER"), "comma-separated control-plane replica addresses (host:port)")
	f.BoolVar(&o.insecureDev, "insecure-dev", false, "talk to the control plane without TLS (development only)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9464", "address of the Prometheus /metrics endpoint (empty: off)")
	f.DurationVar(&o.debounce, "debounce", 50*time.Millisecond, "wait this long for more changes before sending a batch")
	f.DurationVar(&o.maxDelay, "max-delay", 500*time.Millisecond, "send a batch at least this often under steady churn")
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
	conn, err := dial(o.controlPlane, o.insecureDev)
	if err != nil {
		return err
	}
	defer conn.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s, err := syncer.New(syncer.Config{
		Cluster:      o.cluster,
		REST:         restCfg,
		ControlPlane: syncer.NewControlPlane(conn),
		Logger:       log,
		Registerer:   reg,
		Debounce:     o.debounce,
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

// dial connects to every listed replica; gRPC picks one and fails over.
func dial(servers string, insecureDev bool) (*grpc.ClientConn, error) {
	var addrs []resolver.Address
	for _, s := range strings.Split(servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			addrs = append(addrs, resolver.Address{Addr: s})
		}
	}
	if len(addrs) == 0 {
		return nil, errors.New("no control-plane address: set --controlplane or FEDMESH_SERVER")
	}
	if !insecureDev {
		return nil, errors.New("TLS client credentials are not available yet: use --insecure-dev against a development control plane")
	}
	r := manual.NewBuilderWithScheme("fedmesh-syncer")
	r.InitialState(resolver.State{Addresses: addrs})
	cc, err := grpc.NewClient(r.Scheme()+":///control-plane",
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to control plane %s: %w", servers, err)
	}
	return cc, nil
}
