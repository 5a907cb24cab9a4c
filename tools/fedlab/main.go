// Command fedlab runs a whole fedmesh federation on one machine inside
// network namespaces: the demo and the end-to-end harness.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fedmesh/fedmesh/federation/buildinfo"
	"github.com/fedmesh/fedmesh/tools/fedctl/config"
	"github.com/fedmesh/fedmesh/tools/fedlab/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root().ExecuteContext(ctx)
	stop()
	var exit exitStatus
	switch {
	case errors.As(err, &exit):
		os.Exit(int(exit)) // the command run by exec said why
	case err != nil:
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// exitStatus is the exit status of a command fedlab ran for the user, to
// exit with unchanged.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// fedctlConfig is the fedctl config file the lab's context goes into: the
// one fedctl run by the same user (root, under sudo) reads.
func fedctlConfig() (string, error) { return config.Path(os.Getenv) }

// defaultBinDir is the directory of the fedlab binary itself: make build
// puts every fedmesh binary next to it.
func defaultBinDir() string {
	self, err := os.Executable()
	if err != nil {
		return "bin"
	}
	return filepath.Dir(self)
}

func root() *cobra.Command {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var name string
	cmd := &cobra.Command{
		Use:           "fedlab",
		Short:         "A local multi-site fedmesh lab in network namespaces",
		Version:       buildinfo.Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.SetVersionTemplate(buildinfo.VersionTemplate())
	cmd.PersistentFlags().StringVar(&name, "name", lab.DefaultName, "lab name: prefix of every namespace and link (1-6 characters)")

	var cfg lab.Config
	up := &cobra.Command{
		Use:   "up",
		Short: "Build the lab: namespaces, ToR routers (BIRD, FRR), nodes and pods",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Name = name
			start := time.Now()
			l, err := lab.Up(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			fmt.Printf("lab %q up in %s: %d clusters, %d namespaces; state in %s\n", name, time.Since(start).Round(time.Millisecond), len(l.Topo.Clusters), len(l.Topo.Namespaces()), l.Dir)
			if cfg.BinDir != "" {
				writeContext(l, log)
				fmt.Printf("fedctl: %s cluster list   (context %s, in the lab's management namespace)\n", lab.FedctlCommand("fedlab", name), lab.ContextName(name))
			}
			fmt.Printf("next: fedlab status --name %s; fedlab exec --name %s POD -- CMD; fedlab down --name %s\n", name, name, name)
			return nil
		},
	}
	up.Flags().IntVar(&cfg.Clusters, "clusters", 2, "member clusters")
	up.Flags().IntVar(&cfg.Nodes, "nodes", 2, "nodes per cluster")
	up.Flags().IntVar(&cfg.Pods, "pods", 3, "pods per node")
	up.Flags().StringVar(&cfg.BinDir, "bin-dir", defaultBinDir(), "directory with fedmesh-controlplane, fedmesh-agent, fedmesh-syncer and fedctl (make build)")
	up.Flags().BoolVar(&cfg.NoKube, "no-kube", false, "publish endpoints through the API instead of a kube-apiserver and syncer per cluster")
	up.Flags().BoolVar(&cfg.Kubelet, "kubelet", false, "real Kubernetes clusters: kubelet and containerd on every node, fedmesh installed with its Helm chart, demo Deployments (make kubelet-lab)")

	down := &cobra.Command{
		Use:   "down",
		Short: "Stop everything the lab started and remove every namespace, link, BPF pin and file (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return lab.ErrNotRoot
			}
			err := lab.Down(cmd.Context(), name, log)
			if path, perr := fedctlConfig(); perr == nil {
				err = errors.Join(err, lab.RemoveFedctlContext(path, name))
			}
			return err
		},
	}

	status := &cobra.Command{
		Use:   "status",
		Short: "Show what runs: processes, nodes (enforced revision, BGP, WireGuard), ToR routes, pods",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			return l.PrintStatus(cmd.Context(), os.Stdout)
		},
	}

	execCmd := &cobra.Command{
		Use:   "exec POD -- CMD [ARGS...]",
		Short: "Run a command inside a pod's network namespace (POD is its name or cluster/namespace/name)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.LoadState(name)
			if err != nil {
				return fmt.Errorf("lab %q is not up: %w", name, err)
			}
			topo, err := lab.Plan(st.Config)
			if err != nil {
				return err
			}
			if _, _, _, ok := topo.Pod(args[0]); !ok {
				return fmt.Errorf("no pod %q in lab %q (see fedlab status)", args[0], name)
			}
			c := topo.Exec(cmd.Context(), args[0], args[1:])
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
			var exitErr *exec.ExitError
			if err := c.Run(); errors.As(err, &exitErr) && exitErr.Exited() {
				return exitStatus(exitErr.ExitCode())
			} else if err != nil {
				return err
			}
			return nil
		},
	}
	fedctl := &cobra.Command{
		Use:   "fedctl ARGS...",
		Short: "Run fedctl with the lab's context inside its management namespace (exit status is fedctl's)",
		Long: `Run fedctl ARGS with the lab's context (fedlab-NAME, which 'fedlab up' writes
into fedctl's config file) inside the lab's management namespace, the only
place the lab's control plane is reachable from: the lab adds no route to the
root namespace. Every argument goes to fedctl unchanged, except a leading
--name NAME that picks the lab. Needs root (it enters a network namespace).`,
		Example: `  sudo fedlab fedctl policy list
  sudo fedlab fedctl reach cluster-a/demo/web-0 cluster-b/demo/api-1 --port 8080
  sudo fedlab --name lab2 fedctl watch`,
		// Flags are fedctl's: cobra would reject them as fedlab's.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			labName, args := labNameArg(name, args)
			if len(args) == 0 {
				return errors.New("give fedctl's arguments, e.g. fedlab fedctl policy list")
			}
			l, err := lab.Load(labName)
			if err != nil {
				return err
			}
			path, err := fedctlConfig()
			if err != nil {
				return err
			}
			return l.ExecFedctl(path, args)
		},
	}
	var port int
	var proto string
	var timeout time.Duration
	serve := &cobra.Command{
		Use:    "probe-serve",
		Short:  "Answer TCP and UDP probes on --port (runs inside a pod namespace)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE:   func(cmd *cobra.Command, _ []string) error { return lab.Serve(cmd.Context(), port) },
	}
	serve.Flags().IntVar(&port, "port", 8080, "port to answer on")
	probe := &cobra.Command{
		Use:    "probe ADDR:PORT",
		Short:  "One TCP or UDP exchange; exit 0 when answered, 3 when not",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := lab.Probe(cmd.Context(), proto, args[0], timeout); err != nil {
				fmt.Println("blocked:", err)
				os.Exit(3)
			}
			fmt.Println("ok")
			return nil
		},
	}
	probe.Flags().StringVar(&proto, "proto", "tcp", "tcp or udp")
	batch := &cobra.Command{
		Use:    "probe-batch",
		Short:  "Probe a JSON list of {proto, addr} from stdin concurrently; print one outcome per line",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var targets []lab.Target
			if err := json.NewDecoder(os.Stdin).Decode(&targets); err != nil {
				return fmt.Errorf("read targets: %w", err)
			}
			for _, o := range lab.ProbeBatch(cmd.Context(), targets, timeout) {
				fmt.Println(o)
			}
			return nil
		},
	}
	batch.Flags().DurationVar(&timeout, "timeout", 500*time.Millisecond, "how long each probe waits")
	probe.Flags().DurationVar(&timeout, "timeout", time.Second, "how long to wait for the answer")
	var rp lab.RedisProbeOptions
	redisProbe := &cobra.Command{
		Use:    "redis-probe",
		Short:  "A Redis client (go-redis) inside a pod: MGET the instance's identity keys, one line per probe",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := lab.RedisProbe(ctx, os.Stdout, rp); err != nil {
				os.Exit(3)
			}
			return nil
		},
	}
	redisProbe.Flags().StringVar(&rp.Addr, "addr", fmt.Sprintf("%s:%d", lab.RedisName, lab.RedisPort), "service to connect to")
	redisProbe.Flags().DurationVar(&rp.Interval, "interval", 20*time.Millisecond, "pause between probes")
	redisProbe.Flags().IntVar(&rp.Count, "count", 0, "probes to run (0: until interrupted)")
	redisProbe.Flags().DurationVar(&rp.Timeout, "timeout", 300*time.Millisecond, "connect and command timeout")
	redisProbe.Flags().BoolVar(&rp.NewConn, "new-conn", false, "a new connection for every probe (default: keep one, reconnect after an error)")
	var digServer, digNet string
	var digTimeout time.Duration
	digCmd := &cobra.Command{
		Use:    "dig NAME [TYPE]",
		Short:  "Ask --server one DNS question (miekg/dns, no resolv.conf); print the answer as JSON; exit 3 when none came",
		Hidden: true,
		Args:   cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			qtype := "A"
			if len(args) == 2 {
				qtype = args[1]
			}
			res, err := lab.Dig(cmd.Context(), digServer, digNet, args[0], qtype, digTimeout)
			if errors.Is(err, lab.ErrNoAnswer) {
				fmt.Println(err)
				os.Exit(3)
			}
			if err != nil {
				return err
			}
			return json.NewEncoder(os.Stdout).Encode(res)
		},
	}
	digCmd.Flags().StringVar(&digServer, "server", lab.ClusterDNS[0].String()+":53", "DNS server (ip:port)")
	digCmd.Flags().StringVar(&digNet, "net", "udp", "udp or tcp")
	digCmd.Flags().DurationVar(&digTimeout, "timeout", 2*time.Second, "how long to wait for the answer")
	var holdFor, holdEvery time.Duration
	hold := &cobra.Command{
		Use:    "hold ADDR:PORT",
		Short:  "Keep one TCP connection exchanging lines with an outside server; exit 0 when every exchange got through, 3 when one did not",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := lab.Hold(cmd.Context(), args[0], holdFor, holdEvery)
			if err != nil {
				fmt.Printf("broken after %d exchanges: %v\n", n, err)
				os.Exit(3)
			}
			fmt.Printf("held: %d exchanges\n", n)
			return nil
		},
	}
	hold.Flags().DurationVar(&holdFor, "for", 5*time.Second, "how long to keep exchanging")
	hold.Flags().DurationVar(&holdEvery, "every", 200*time.Millisecond, "pause between exchanges")
	var outPort, outHTTP int
	outsideServe := &cobra.Command{
		Use:    "outside-serve",
		Short:  "The outside namespace's servers: TCP greeting and echo, UDP echo, HTTP (runs inside the lab)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lab.ServeOutside(cmd.Context(), outPort, outHTTP)
		},
	}
	outsideServe.Flags().IntVar(&outPort, "port", lab.OutsideTCPPort, "TCP and UDP port")
	outsideServe.Flags().IntVar(&outHTTP, "http-port", lab.OutsideHTTPPort, "HTTP port")
	var httpHost string
	var httpTimeout time.Duration
	httpGet := &cobra.Command{
		Use:    "http-get ADDR:PORT",
		Short:  "GET http://--host/ from ADDR:PORT and print the body; exit 3 when it fails",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body, err := lab.HTTPGet(cmd.Context(), args[0], httpHost, httpTimeout)
			if err != nil {
				fmt.Println("blocked:", err)
				os.Exit(3)
			}
			fmt.Print(body)
			return nil
		},
	}
	httpGet.Flags().StringVar(&httpHost, "host", "", "Host header (the name asked for)")
	httpGet.Flags().DurationVar(&httpTimeout, "timeout", 2*time.Second, "how long to wait")
	var kubeCluster, kubeDir string
	kube := &cobra.Command{
		Use:    "kube-cluster",
		Short:  "Supervise one cluster's etcd, kube-apiserver and syncer (runs inside the lab)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.LoadState(name)
			if err != nil {
				return err
			}
			return lab.RunKubeCluster(cmd.Context(), st, kubeCluster, kubeDir, log)
		},
	}
	kube.Flags().StringVar(&kubeCluster, "cluster", "", "cluster to run")
	kube.Flags().StringVar(&kubeDir, "dir", "", "directory for its files")
	var exportCluster, exportService string
	kubeExport := &cobra.Command{
		Use: "kube-export", Hidden: true, Args: cobra.NoArgs,
		Short: "Create a Service, its EndpointSlice and a ServiceExport in a cluster (runs inside the lab)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.LoadState(name)
			if err != nil {
				return err
			}
			if err := lab.ExportService(cmd.Context(), st, exportCluster, exportService); err != nil {
				return err
			}
			fmt.Printf("created Service, EndpointSlice and ServiceExport demo/%s in %s\n", exportService, exportCluster)
			return nil
		},
	}
	kubeExport.Flags().StringVar(&exportCluster, "cluster", "", "cluster")
	kubeExport.Flags().StringVar(&exportService, "service", "api", "app label of the service's pods")
	kubeImports := &cobra.Command{
		Use: "kube-imports", Hidden: true, Args: cobra.NoArgs,
		Short: "List the ServiceImports the syncer wrote into a cluster (runs inside the lab)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.LoadState(name)
			if err != nil {
				return err
			}
			return lab.PrintImports(cmd.Context(), os.Stdout, st, exportCluster)
		},
	}
	kubeImports.Flags().StringVar(&exportCluster, "cluster", "", "cluster")
	var applyFile string
	var applyDelete bool
	kubeApply := &cobra.Command{
		Use: "kube-apply", Hidden: true, Args: cobra.NoArgs,
		Short: "kubectl apply -f (or delete -f) of a manifest in one cluster's kube-apiserver (runs inside the lab)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.LoadState(name)
			if err != nil {
				return err
			}
			manifest, err := os.ReadFile(applyFile)
			if err != nil {
				return err
			}
			return lab.KubeApply(cmd.Context(), os.Stdout, st, exportCluster, manifest, applyDelete)
		},
	}
	kubeApply.Flags().StringVar(&exportCluster, "cluster", "", "cluster")
	kubeApply.Flags().StringVarP(&applyFile, "filename", "f", "", "manifest (YAML, several documents allowed)")
	kubeApply.Flags().BoolVar(&applyDelete, "delete", false, "delete the manifest's objects instead")

	demo := &cobra.Command{
		Use:   "demo",
		Short: "Bring a fresh lab up and play the narrated tour (make demo)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return lab.ErrNotRoot
			}
			cfg.Name = name
			if _, err := lab.LoadState(name); err == nil {
				fmt.Printf("==> removing the previous lab %q\n", name)
				if err := lab.Down(cmd.Context(), name, log); err != nil {
					return err
				}
			}
			fmt.Printf("==> building lab %q: %d clusters x %d nodes x %d pods, real BIRD/FRR ToRs, 3 control-plane replicas, a kube-apiserver per cluster\n", name, cfg.Clusters, cfg.Nodes, cfg.Pods)
			start := time.Now()
			l, err := lab.Up(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			fmt.Printf("    lab up in %s\n", time.Since(start).Round(100*time.Millisecond))
			writeContext(l, log)
			d := &lab.Demo{Lab: l, Out: os.Stdout}
			if err := d.Run(cmd.Context()); err != nil {
				return fmt.Errorf("demo: %w (the lab is still up: fedlab status --name %s; fedlab down --name %s)", err, name, name)
			}
			return nil
		},
	}
	demo.Flags().IntVar(&cfg.Clusters, "clusters", 2, "member clusters")
	demo.Flags().IntVar(&cfg.Nodes, "nodes", 2, "nodes per cluster")
	demo.Flags().IntVar(&cfg.Pods, "pods", 3, "pods per node (the third of every node is a db pod running redis-server)")
	demo.Flags().StringVar(&cfg.BinDir, "bin-dir", defaultBinDir(), "directory with the fedmesh binaries (make build)")
	demo.Flags().BoolVar(&cfg.NoKube, "no-kube", false, "publish endpoints through the API instead of a kube-apiserver and syncer per cluster")
	restart := &cobra.Command{
		Use:   "restart PROCESS",
		Short: "Restart a lab process (as named by fedlab status), e.g. after killing it to test recovery",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			if l.Alive(args[0]) {
				if err := l.Stop(args[0]); err != nil {
					return err
				}
			}
			return l.Restart(args[0])
		},
	}
	cmd.AddCommand(up, down, status, execCmd, fedctl, serve, probe, batch, redisProbe, restart, kube, kubeExport, kubeImports, kubeApply, demo, digCmd, hold, outsideServe, httpGet)
	return cmd
}

// writeContext adds the lab's context to fedctl's config file; a lab
// without it still works (fedlab fedctl writes it when missing), so a
// failure is logged, not returned.
func writeContext(l *lab.Lab, log *slog.Logger) {
	path, err := fedctlConfig()
	if err == nil {
		err = l.WriteFedctlContext(path)
	}
	if err != nil {
		log.Warn("no fedctl context for the lab", "err", err)
	}
}

// labNameArg takes a leading --name NAME (or --name=NAME) off fedctl's
// arguments: with flag parsing off, cobra passes fedlab's own --name along
// whether it came before or right after "fedctl".
func labNameArg(name string, args []string) (string, []string) {
	for len(args) > 0 {
		switch {
		case args[0] == "--name" && len(args) > 1:
			name, args = args[1], args[2:]
		case strings.HasPrefix(args[0], "--name="):
			name, args = strings.TrimPrefix(args[0], "--name="), args[1:]
		default:
			return name, args
		}
	}
	return name, args
}
