// Package cli owns fedctl's command tree: flags, requests to the control
// plane and what is printed. Commands are thin: they build a request, call
// one RPC and print the answer; validation happens once, at the server.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/federation/buildinfo"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// DefaultServer is where fedctl looks for the control plane when neither
// --server nor FEDMESH_SERVER says otherwise.
const DefaultServer = "127.0.0.1:9000"

type globals struct {
	servers  string
	insecure bool
	timeout  time.Duration
	output   string
	creds    credFlags
	// principal is whom the loaded client certificate names; set by dial,
	// Kind 0 when there is none (plaintext, or --ca alone for a join).
	principal auth.Principal
	out       io.Writer
	errOut    io.Writer
}

// NewRoot builds the fedctl command tree writing to out and errOut.
func NewRoot(out, errOut io.Writer) *cobra.Command {
	g := &globals{out: out, errOut: errOut}
	root := &cobra.Command{
		Use:           "fedctl",
		Short:         "Command-line client of the fedmesh control plane",
		Version:       buildinfo.Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate(buildinfo.VersionTemplate())
	root.SetOut(out)
	root.SetErr(errOut)
	server := os.Getenv("FEDMESH_SERVER")
	if server == "" {
		server = DefaultServer
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.servers, "server", server, "control-plane replicas, comma-separated host:port (env FEDMESH_SERVER); any replica serves reads and forwards writes")
	pf.BoolVar(&g.insecure, "insecure-dev", false, "talk to the control plane without TLS (development only; excludes --ca, --cert and --key)")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second, "deadline of each request")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	addCredentialFlags(pf, &g.creds)
	root.AddCommand(clusterCmd(g), nodeCmd(g), endpointCmd(g), policyCmd(g), reachCmd(g), serviceCmd(g), watchCmd(g), waitCmd(g), controlPlaneCmd(g), flowsCmd(g))
	root.AddCommand(caCmd(g), tokenCmd(g), versionCmd(g))
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		fmt.Fprintf(errOut, "error: %v\nsee '%s --help'\n", err, c.CommandPath())
		return err
	})
	// Errors are printed once, here, with the field violations the server
	// returned, so a user sees which field to fix.
	for _, c := range allCommands(root) {
		if c.RunE == nil {
			continue
		}
		run := c.RunE
		c.RunE = func(cmd *cobra.Command, args []string) error {
			err := run(cmd, args)
			if err != nil && !errors.Is(err, ErrDenied) {
				fmt.Fprintln(errOut, "error:", describe(err))
			}
			return err
		}
	}
	return root
}

func allCommands(c *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{c}
	for _, sub := range c.Commands() {
		out = append(out, allCommands(sub)...)
	}
	return out
}

// describe renders a gRPC error with its field violations, one per line.
func describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", st.Code(), st.Message())
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fmt.Fprintf(&b, "\n  %s: %s", v.GetField(), v.GetDescription())
			}
		}
	}
	return b.String()
}

// conn is a connection to the control plane with its typed clients.
type conn struct {
	cc       *grpc.ClientConn
	clusters fedmeshv1.ClusterServiceClient
	nodes    fedmeshv1.NodeServiceClient
	eps      fedmeshv1.EndpointServiceClient
	policies fedmeshv1.PolicyServiceClient
	services fedmeshv1.MultiClusterServiceClient
	reach    fedmeshv1.ReachServiceClient
	watch    fedmeshv1.WatchServiceClient
}

// dial connects to the replicas given by --server; pick_first tries them in
// order, so a dead replica costs one connection attempt, not a failure.
func (g *globals) dial() (*conn, error) {
	var addrs []resolver.Address
	for _, s := range strings.Split(g.servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			// TLS verifies each replica by its own host, not by the
			// resolver's "control-plane" authority.
			addrs = append(addrs, resolver.Address{Addr: s, ServerName: hostOf(s)})
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("no control-plane address: set --server or FEDMESH_SERVER")
	}
	creds, err := g.transportCredentials()
	if err != nil {
		return nil, err
	}
	r := manual.NewBuilderWithScheme("fedctl")
	r.InitialState(resolver.State{Addresses: addrs})
	cc, err := grpc.NewClient(r.Scheme()+":///control-plane",
		grpc.WithResolvers(r),
		creds,
	)
	if err != nil {
		return nil, fmt.Errorf("connect to control plane %s: %w", g.servers, err)
	}
	return &conn{
		cc:       cc,
		clusters: fedmeshv1.NewClusterServiceClient(cc),
		nodes:    fedmeshv1.NewNodeServiceClient(cc),
		eps:      fedmeshv1.NewEndpointServiceClient(cc),
		policies: fedmeshv1.NewPolicyServiceClient(cc),
		services: fedmeshv1.NewMultiClusterServiceClient(cc),
		reach:    fedmeshv1.NewReachServiceClient(cc),
		watch:    fedmeshv1.NewWatchServiceClient(cc),
	}, nil
}

// run dials, bounds the call by --timeout and closes the connection.
func (g *globals) run(ctx context.Context, f func(ctx context.Context, c *conn) error) error {
	c, err := g.dial()
	if err != nil {
		return err
	}
	defer c.cc.Close()
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	return f(ctx, c)
}

// hostOf is the host part of host:port (the whole string if it has no port).
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
