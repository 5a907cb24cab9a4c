package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// The lab runs everything over mTLS, as a deployment would: `fedlab up`
// creates a CA in the lab's state dir, issues the replicas' certificates
// and an admin certificate (for fedctl and fedlab's own calls), and gives
// every syncer and agent a single-use join token, which they exchange for
// their own certificate (kept in their state dir) on first start.

// pkiDir holds the lab's CA (ca.crt, ca.key) and admin.crt/admin.key.
func pkiDir(labDir string) string { return filepath.Join(labDir, "pki") }

func caFile(labDir string) string { return filepath.Join(pkiDir(labDir), ca.CertFile) }

func (l *Lab) adminCert() (certPath, keyPath string) {
	return filepath.Join(pkiDir(l.Dir), "admin.crt"), filepath.Join(pkiDir(l.Dir), "admin.key")
}

// replicaTLSDir is replica i's --tls-dir: the CA with its key (so every
// replica signs join and renewal requests) and the replica's certificate.
func (l *Lab) replicaTLSDir(i int) string { return filepath.Join(l.Dir, fmt.Sprintf("cp%d-tls", i)) }

// initPKI creates the CA and the operator-issued certificates.
func (l *Lab) initPKI() error {
	dir := pkiDir(l.Dir)
	c, err := ca.Init(dir, "fedlab "+l.Topo.Name+" CA", ca.DefaultCALifetime)
	if err != nil {
		return fmt.Errorf("create lab CA: %w", err)
	}
	for i := 1; i <= replicas; i++ {
		tdir := l.replicaTLSDir(i)
		if err := os.MkdirAll(tdir, 0o700); err != nil {
			return err
		}
		for _, f := range []string{ca.CertFile, ca.KeyFile} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(tdir, f), b, 0o600); err != nil {
				return err
			}
		}
		certPEM, keyPEM, err := c.Issue(ca.Leaf{
			ID: auth.Replica(fmt.Sprintf("cp%d", i)).URI(), Usage: ca.UsageReplica,
			IPs: []net.IP{net.IP(l.Topo.Mgmt.Addr.Addr().AsSlice())},
		})
		if err != nil {
			return fmt.Errorf("issue replica certificate: %w", err)
		}
		if err := ca.WriteCredentials(filepath.Join(tdir, "replica.crt"), filepath.Join(tdir, "replica.key"), certPEM, keyPEM); err != nil {
			return err
		}
	}
	certPEM, keyPEM, err := c.Issue(ca.Leaf{ID: auth.Admin().URI(), Lifetime: 30 * 24 * time.Hour})
	if err != nil {
		return fmt.Errorf("issue admin certificate: %w", err)
	}
	certPath, keyPath := l.adminCert()
	return ca.WriteCredentials(certPath, keyPath, certPEM, keyPEM)
}

// fedctlCreds are fedctl's flags for the admin certificate.
func (l *Lab) fedctlCreds() []string {
	certPath, keyPath := l.adminCert()
	return []string{"--ca", caFile(l.Dir), "--cert", certPath, "--key", keyPath}
}

// adminDialOption is mTLS as admin, for fedlab's own calls.
func (l *Lab) adminDialOption() (grpc.DialOption, error) {
	roots, err := auth.CAPool(caFile(l.Dir))
	if err != nil {
		return nil, err
	}
	cert, err := auth.LoadCertificate(l.adminCert())
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(roots, cert))), nil
}

// joinToken asks the control plane for a single-use token for the syncer
// of cluster (node empty) or one node's agent.
func (l *Lab) joinToken(ctx context.Context, cluster, node string) (string, error) {
	cc, err := l.Dial()
	if err != nil {
		return "", err
	}
	defer cc.Close()
	resp, err := fedmeshv1.NewAuthServiceClient(cc).CreateJoinToken(ctx, &fedmeshv1.CreateJoinTokenRequest{
		Cluster: cluster, Node: node, Ttl: durationpb.New(auth.DefaultTokenTTL)})
	if err != nil {
		return "", fmt.Errorf("create join token for %s/%s: %w", cluster, node, err)
	}
	return resp.GetToken(), nil
}

// syncerTokenFile is where `fedlab up` leaves the syncer's token for the
// kube-cluster supervisor that starts it.
func syncerTokenFile(labDir, cluster string) string {
	return filepath.Join(pkiDir(labDir), "syncer-"+cluster+".token")
}
