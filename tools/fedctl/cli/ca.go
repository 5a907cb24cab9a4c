package cli

// Security commands (owned with controlplane/auth): the CA, operator-issued
// replica and admin credentials, join tokens and joining, and the TLS
// client credentials every other command dials with.

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	"github.com/fedmesh/fedmesh/tools/fedctl/config"
)

// credFlags are the client credentials: the CA that verifies replicas and
// this client's certificate and key.
type credFlags struct {
	caFile, certFile, keyFile string
}

func addCredentialFlags(pf *pflag.FlagSet, c *credFlags) {
	pf.StringVar(&c.caFile, "ca", "", "CA certificate verifying the control plane (env FEDMESH_CA; default the context's); setting it turns TLS on")
	pf.StringVar(&c.certFile, "cert", "", "client certificate (env FEDMESH_CERT; default the context's)")
	pf.StringVar(&c.keyFile, "key", "", "client key (env FEDMESH_KEY; default the context's)")
}

// ErrNoCredentials says which flags, variables or context a command that
// dials needs.
var ErrNoCredentials = config.ErrNoCredentials

// transportCredentials is mTLS when s has a CA, plaintext only when s says
// insecure-dev explicitly; neither is an error naming the flags.
func (g *globals) transportCredentials(s config.Settings) (grpc.DialOption, error) {
	if s.InsecureDev {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	if s.CA == "" {
		return nil, ErrNoCredentials
	}
	roots, err := auth.CAPool(s.CA)
	if err != nil {
		return nil, fmt.Errorf("CA from %s: %w", s.CAFrom, err)
	}
	var cert *auth.Certificate
	if s.Cert != "" {
		if cert, err = auth.LoadCertificate(s.Cert, s.Key); err != nil {
			return nil, fmt.Errorf("client certificate from %s: %w", s.CertFrom, err)
		}
		if g.principal, err = cert.Principal(); err != nil {
			return nil, fmt.Errorf("client certificate %s: %w", s.Cert, err)
		}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(roots, cert))), nil
}

// isAdmin reports whether the connection is mTLS with an admin
// certificate: only then may fedctl create join tokens.
func (g *globals) isAdmin() bool { return g.principal == auth.Admin() }

// createJoinToken asks for a token for the syncer of cluster (node empty)
// or one node's agent.
func createJoinToken(ctx context.Context, c *conn, cluster, node string, ttl time.Duration) (*fedmeshv1.CreateJoinTokenResponse, error) {
	resp, err := fedmeshv1.NewAuthServiceClient(c.cc).CreateJoinToken(ctx, &fedmeshv1.CreateJoinTokenRequest{Cluster: cluster, Node: node, Ttl: durationpb.New(ttl)})
	if err != nil {
		who := auth.Syncer(cluster)
		if node != "" {
			who = auth.Node(cluster, node)
		}
		return nil, fmt.Errorf("create join token for %s: %w", who, err)
	}
	return resp, nil
}

func caCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "ca", Short: "Create the federation's CA and issue operator credentials (offline: needs the CA key)"}
	var dir string
	c.PersistentFlags().StringVar(&dir, "ca-dir", "", "directory holding ca.crt and ca.key")
	_ = c.MarkPersistentFlagRequired("ca-dir")

	var name string
	var lifetime time.Duration
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create an ECDSA P-256 CA (ca.key 0600, ca.crt)",
		Long: `Create the CA. Copy ca.crt and ca.key into every replica's data dir (the
key only where replicas sign join requests): the CA is shared by operator copy,
not through Raft, because a replica needs its certificate before it may speak Raft.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			a, err := ca.Init(dir, name, lifetime)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "created CA %q in %s (expires %s)\n", a.Certificate().Subject.CommonName, dir, a.Certificate().NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	initCmd.Flags().StringVar(&name, "name", "fedmesh CA", "CA common name")
	initCmd.Flags().DurationVar(&lifetime, "lifetime", ca.DefaultCALifetime, "CA lifetime")

	var (
		id, outDir string
		ips, dns   []string
		leafLife   time.Duration
	)
	replicaCmd := &cobra.Command{
		Use:     "issue-replica",
		Short:   "Issue a replica certificate (server and client usage) with its IP and DNS names",
		Example: `  fedctl ca issue-replica --ca-dir ./ca --id cp1 --ip 198.18.0.10 --out-dir /var/lib/fedmesh/cp1`,
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			p := auth.Replica(id)
			if err := p.Validate(); err != nil {
				return err
			}
			l := ca.Leaf{ID: p.URI(), Usage: ca.UsageReplica, DNSNames: dns, Lifetime: leafLife}
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return fmt.Errorf("parse --ip %q: not an IP address", s)
				}
				l.IPs = append(l.IPs, ip)
			}
			return issue(g, dir, outDir, "replica", l)
		},
	}
	replicaCmd.Flags().StringVar(&id, "id", "", "replica ID (its --node-id)")
	replicaCmd.Flags().StringSliceVar(&ips, "ip", nil, "IP address clients and peers dial (repeatable)")
	replicaCmd.Flags().StringSliceVar(&dns, "dns", nil, "DNS name clients and peers dial (repeatable)")
	replicaCmd.Flags().StringVar(&outDir, "out-dir", ".", "where to write replica.crt and replica.key")
	replicaCmd.Flags().DurationVar(&leafLife, "lifetime", ca.DefaultReplicaLifetime, "certificate lifetime")
	_ = replicaCmd.MarkFlagRequired("id")

	var adminOut string
	var adminLife time.Duration
	adminCmd := &cobra.Command{
		Use:   "issue-admin",
		Short: "Issue an admin client certificate",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return issue(g, dir, adminOut, "admin", ca.Leaf{ID: auth.Admin().URI(), Lifetime: adminLife})
		},
	}
	adminCmd.Flags().StringVar(&adminOut, "out-dir", ".", "where to write admin.crt and admin.key")
	adminCmd.Flags().DurationVar(&adminLife, "lifetime", 30*24*time.Hour, "certificate lifetime")

	c.AddCommand(initCmd, replicaCmd, adminCmd)
	return c
}

func issue(g *globals, caDir, outDir, base string, l ca.Leaf) error {
	a, err := ca.Load(caDir)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := a.Issue(l)
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(outDir, base+".crt"), filepath.Join(outDir, base+".key")
	if err := ca.WriteCredentials(certPath, keyPath, certPEM, keyPEM); err != nil {
		return err
	}
	fmt.Fprintf(g.out, "issued %s: %s, %s\n", l.ID, certPath, keyPath)
	return nil
}

func tokenCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "token", Short: "Join tokens: create one (admin), or exchange one for a certificate"}
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create CLUSTER [NODE]",
		Short: "Create a single-use join token for a cluster's syncer, or for one node's agent",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &fedmeshv1.CreateJoinTokenRequest{Cluster: args[0], Ttl: durationpb.New(ttl)}
			if len(args) == 2 {
				req.Node = args[1]
			}
			return g.run(cmd.Context(), func(ctx context.Context, c *conn) error {
				resp, err := fedmeshv1.NewAuthServiceClient(c.cc).CreateJoinToken(ctx, req)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.errOut, "token for %s, single use, expires %s\n", resp.GetPrincipal(), resp.GetExpireTime().AsTime().UTC().Format(time.RFC3339))
				fmt.Fprintln(g.out, resp.GetToken())
				return nil
			})
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", auth.DefaultTokenTTL, "how long the token may be used")

	var token, outDir, base string
	join := &cobra.Command{
		Use:   "join",
		Short: "Exchange a join token for a certificate (needs --ca, no client certificate)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := g.settings()
			if err != nil {
				return err
			}
			if s.InsecureDev || s.CA == "" {
				return fmt.Errorf("join needs a CA (--ca, FEDMESH_CA or the context's) to verify the control plane before sending the token")
			}
			// The token is the credential: a client certificate from the
			// context would only say who asks for someone else's.
			s.Cert, s.Key = "", ""
			return g.runWith(cmd.Context(), s, func(ctx context.Context, c *conn) error {
				certPEM, keyPEM, err := auth.JoinWithToken(ctx, fedmeshv1.NewAuthServiceClient(c.cc), token)
				if err != nil {
					return err
				}
				certPath, keyPath := filepath.Join(outDir, base+".crt"), filepath.Join(outDir, base+".key")
				if err := ca.WriteCredentials(certPath, keyPath, certPEM, keyPEM); err != nil {
					return err
				}
				fmt.Fprintf(g.out, "joined: %s, %s\n", certPath, keyPath)
				return nil
			})
		},
	}
	join.Flags().StringVar(&token, "token", "", "join token from 'fedctl token create'")
	join.Flags().StringVar(&outDir, "out-dir", ".", "where to write the certificate and key")
	join.Flags().StringVar(&base, "name", "client", "file name stem of the certificate and key")
	_ = join.MarkFlagRequired("token")
	c.AddCommand(create, join)
	return c
}
