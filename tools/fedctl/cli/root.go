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
	"github.com/fedmesh/fedmesh/tools/fedctl/config"
)

// DefaultServer is where fedctl looks for the control plane when no flag,
// environment variable or context names a server.
const DefaultServer = config.DefaultServer

type globals struct {
	context  string
	servers  string
	insecure bool
	timeout  time.Duration
	output   string
	creds    credFlags
	// getenv reads the environment (os.Getenv outside tests).
	getenv func(string) string
	// principal is whom the loaded client certificate names; set by dial,
	// Kind 0 when there is none (plaintext, or --ca alone for a join).
	principal auth.Principal
	out       io.Writer
	errOut    io.Writer
}

// Execute runs fedctl with args and returns its exit status: 0; 1 on an
// error, printed once on errOut (with a pointer to --help when the command
// line itself is wrong); 2 when `fedctl reach` answers denied. getenv is
// os.Getenv outside tests.
func Execute(ctx context.Context, args []string, out, errOut io.Writer, getenv func(string) string) int {
	root := newRoot(out, errOut, getenv)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	var re *runError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrDenied):
		return 2 // reach printed the verdict; nothing more to say
	case errors.As(err, &re):
		fmt.Fprintln(errOut, "error:", describe(re.err))
	default:
		// cobra's own errors: unknown command or flag, wrong arguments,
		// a required flag missing.
		fmt.Fprintf(errOut, "error: %v\nsee '%s --help'\n", err, cmd.CommandPath())
	}
	return 1
}

// NewRoot builds the command tree for a caller that runs it itself
// (root.Execute, as in-process tests do), with the environment of the
// process: an error a command's run returns is printed on errOut, once;
// a command-line error is only returned. fedctl's main uses Execute, which
// prints both.
func NewRoot(out, errOut io.Writer) *cobra.Command {
	root := newRoot(out, errOut, os.Getenv)
	for _, c := range allCommands(root) {
		if c.RunE == nil {
			continue
		}
		run := c.RunE
		c.RunE = func(cmd *cobra.Command, args []string) error {
			err := run(cmd, args)
			var re *runError
			if errors.As(err, &re) && !errors.Is(err, ErrDenied) {
				fmt.Fprintln(errOut, "error:", describe(re.err))
			}
			return err
		}
	}
	return root
}

// runError marks an error a command's run returned, as opposed to one cobra
// found in the command line.
type runError struct{ err error }

func (e *runError) Error() string { return e.err.Error() }
func (e *runError) Unwrap() error { return e.err }

const rootLong = `Command-line client of the fedmesh control plane.

fedctl finds the control plane and its credentials from, highest first:
  1. flags:       --server, --ca, --cert, --key, --insecure-dev
  2. environment: FEDMESH_SERVER, FEDMESH_CA, FEDMESH_CERT, FEDMESH_KEY
  3. a context:   the one --context (env FEDMESH_CONTEXT) names, else the
                  config file's current-context
  4. default:     server 127.0.0.1:9000
Each setting comes from the highest source that gives it; a certificate and its
key always come from the same source, and the highest source that says anything
about TLS decides between TLS and --insecure-dev.

Contexts live in $XDG_CONFIG_HOME/fedmesh/config.yaml (default
~/.config/fedmesh/config.yaml); manage them with 'fedctl config'. 'fedlab up'
adds one for its lab; 'sudo fedlab fedctl ARGS' runs fedctl with it.`

// newRoot builds the fedctl command tree writing to out and errOut.
func newRoot(out, errOut io.Writer, getenv func(string) string) *cobra.Command {
	g := &globals{out: out, errOut: errOut, getenv: getenv}
	root := &cobra.Command{
		Use:           "fedctl",
		Short:         "Command-line client of the fedmesh control plane",
		Long:          rootLong,
		Version:       buildinfo.Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate(buildinfo.VersionTemplate())
	root.SetOut(out)
	root.SetErr(errOut)
	pf := root.PersistentFlags()
	pf.StringVar(&g.context, "context", "", "context of the config file to use (env FEDMESH_CONTEXT; default its current-context)")
	pf.StringVar(&g.servers, "server", "", "control-plane replicas, comma-separated host:port (env FEDMESH_SERVER; default the context's, else "+DefaultServer+"); any replica serves reads and forwards writes")
	pf.BoolVar(&g.insecure, "insecure-dev", false, "talk to the control plane without TLS (development only; excludes --ca, --cert and --key)")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second, "deadline of each request")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	addCredentialFlags(pf, &g.creds)
	root.AddCommand(clusterCmd(g), nodeCmd(g), endpointCmd(g), policyCmd(g), reachCmd(g), serviceCmd(g), watchCmd(g), waitCmd(g), controlPlaneCmd(g), flowsCmd(g), dnsCmd(g))
	root.AddCommand(caCmd(g), tokenCmd(g), versionCmd(g))
	root.AddCommand(configCmd(g))
	root.AddCommand(auditCmd(g))
	root.AddCommand(bgpCmd(g))
	// Errors are printed once, by Execute; marking those a command's run
	// returned tells them from command-line errors.
	for _, c := range allCommands(root) {
		if c.RunE == nil {
			continue
		}
		run := c.RunE
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if err := run(cmd, args); err != nil {
				return &runError{err}
			}
			return nil
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

// describe renders a gRPC error with its field violations, one per line,
// each once: the server's message already holds them (model's
// ValidationError), so only what it says besides them is kept.
func describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	var violations []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				violations = append(violations, v.GetField()+": "+v.GetDescription())
			}
		}
	}
	// A client-side wrap ("wait for revision 3: %w") puts grpc's own
	// rendering of the status inside the message; the code is said once.
	msg := strings.Replace(st.Message(), "rpc error: code = "+st.Code().String()+" desc = ", "", 1)
	rest := msg
	for _, v := range violations {
		if !strings.Contains(rest, v) {
			rest = msg // the message is something else: keep it whole
			break
		}
		rest = strings.Replace(rest, v, "", 1)
	}
	if rest != msg {
		rest = strings.Trim(rest, " :,[]") // what joined the violations
	}
	head := st.Code().String()
	if rest != "" {
		head += ": " + rest
	}
	if len(violations) == 1 {
		return head + ": " + violations[0]
	}
	var b strings.Builder
	b.WriteString(head)
	for _, v := range violations {
		b.WriteString("\n  " + v)
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

// settings resolves the connection settings: flag > env > context >
// default (config.Resolve). The config file is read only here, so commands
// that do not dial work with a broken one.
func (g *globals) settings() (config.Settings, error) {
	flags := config.Overrides{
		Context: g.context, Servers: config.SplitServers(g.servers), InsecureDev: g.insecure,
		CA: g.creds.caFile, Cert: g.creds.certFile, Key: g.creds.keyFile,
	}
	env := config.FromEnv(g.getenv)
	f := &config.File{}
	path, err := config.Path(g.getenv)
	switch {
	case err == nil:
		if f, err = config.Load(path); err != nil {
			return config.Settings{}, err
		}
	case flags.Context != "" || env.Context != "":
		return config.Settings{}, err
	}
	return config.Resolve(f, flags, env)
}

// dial connects to the replicas the settings name.
func (g *globals) dial() (*conn, error) {
	s, err := g.settings()
	if err != nil {
		return nil, err
	}
	return g.dialWith(s)
}

// dialWith connects to s.Servers; pick_first tries them in order, so a dead
// replica costs one connection attempt, not a failure.
func (g *globals) dialWith(s config.Settings) (*conn, error) {
	var addrs []resolver.Address
	for _, a := range s.Servers {
		// TLS verifies each replica by its own host, not by the
		// resolver's "control-plane" authority.
		addrs = append(addrs, resolver.Address{Addr: a, ServerName: hostOf(a)})
	}
	creds, err := g.transportCredentials(s)
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
		return nil, fmt.Errorf("connect to control plane %s: %w", strings.Join(s.Servers, ","), err)
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
	s, err := g.settings()
	if err != nil {
		return err
	}
	return g.runWith(ctx, s, f)
}

// runWith is run with settings already resolved.
func (g *globals) runWith(ctx context.Context, s config.Settings, f func(ctx context.Context, c *conn) error) error {
	c, err := g.dialWith(s)
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
