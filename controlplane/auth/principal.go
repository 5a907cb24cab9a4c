package auth

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// TrustDomain is the authority of every fedmesh principal URI.
const TrustDomain = "fedmesh"

// Kind is what a principal is.
type Kind uint8

// Principal kinds.
const (
	KindUnknown Kind = iota
	KindAdmin
	KindSyncer
	KindNode
	KindReplica
)

func (k Kind) String() string {
	switch k {
	case KindAdmin:
		return "admin"
	case KindSyncer:
		return "syncer"
	case KindNode:
		return "node"
	case KindReplica:
		return "replica"
	default:
		return "unknown"
	}
}

// Principal is an authenticated caller, decoded from the URI SAN of its
// verified client certificate:
//
//	spiffe://fedmesh/admin
//	spiffe://fedmesh/cluster/<cluster>/syncer
//	spiffe://fedmesh/cluster/<cluster>/node/<node>
//	spiffe://fedmesh/controlplane/<replica-id>
type Principal struct {
	Kind    Kind
	Cluster string // syncer, node
	Node    string // node
	Replica string // replica
}

// Admin, Syncer, Node and Replica build principals.
func Admin() Principal                { return Principal{Kind: KindAdmin} }
func Syncer(cluster string) Principal { return Principal{Kind: KindSyncer, Cluster: cluster} }
func Node(cluster, node string) Principal {
	return Principal{Kind: KindNode, Cluster: cluster, Node: node}
}
func Replica(id string) Principal { return Principal{Kind: KindReplica, Replica: id} }

// String is the principal's URI.
func (p Principal) String() string {
	switch p.Kind {
	case KindAdmin:
		return "spiffe://" + TrustDomain + "/admin"
	case KindSyncer:
		return "spiffe://" + TrustDomain + "/cluster/" + p.Cluster + "/syncer"
	case KindNode:
		return "spiffe://" + TrustDomain + "/cluster/" + p.Cluster + "/node/" + p.Node
	case KindReplica:
		return "spiffe://" + TrustDomain + "/controlplane/" + p.Replica
	default:
		return "<unknown principal>"
	}
}

// URI is the principal as the URI SAN a certificate carries. It panics on a
// principal that does not validate: build principals with the constructors
// from validated names, or with ParsePrincipal.
func (p Principal) URI() *url.URL {
	if err := p.Validate(); err != nil {
		panic(fmt.Sprintf("auth: URI of invalid principal: %v", err))
	}
	u, _ := url.Parse(p.String())
	return u
}

// ErrBadPrincipal wraps every principal decoding failure.
var ErrBadPrincipal = errors.New("bad principal")

// Validate checks the names a principal carries.
func (p Principal) Validate() error {
	switch p.Kind {
	case KindAdmin:
		if p.Cluster != "" || p.Node != "" || p.Replica != "" {
			return fmt.Errorf("%w: admin carries no names", ErrBadPrincipal)
		}
	case KindSyncer:
		if p.Node != "" || p.Replica != "" {
			return fmt.Errorf("%w: syncer carries only a cluster", ErrBadPrincipal)
		}
		return checkName("cluster", p.Cluster, validation.IsDNS1123Label)
	case KindNode:
		if p.Replica != "" {
			return fmt.Errorf("%w: node carries only a cluster and node", ErrBadPrincipal)
		}
		if err := checkName("cluster", p.Cluster, validation.IsDNS1123Label); err != nil {
			return err
		}
		return checkName("node", p.Node, validation.IsDNS1123Subdomain)
	case KindReplica:
		if p.Cluster != "" || p.Node != "" {
			return fmt.Errorf("%w: replica carries only its ID", ErrBadPrincipal)
		}
		return checkName("replica ID", p.Replica, validation.IsDNS1123Subdomain)
	default:
		return fmt.Errorf("%w: unknown kind", ErrBadPrincipal)
	}
	return nil
}

func checkName(what, v string, check func(string) []string) error {
	if msgs := check(v); len(msgs) > 0 {
		return fmt.Errorf("%w: %s %q: %s", ErrBadPrincipal, what, v, strings.Join(msgs, "; "))
	}
	return nil
}

// ParsePrincipal decodes a principal URI. It accepts only the canonical
// form (the one String produces): no percent-encoding, query, fragment,
// user info, port, empty or trailing path segments, and names that are
// valid cluster/node/replica names, so that two different strings never
// name the same principal.
func ParsePrincipal(s string) (Principal, error) {
	const prefix = "spiffe://" + TrustDomain + "/"
	if !strings.HasPrefix(s, prefix) {
		return Principal{}, fmt.Errorf("%w: %q does not start with %s", ErrBadPrincipal, s, prefix)
	}
	// Characters outside the unreserved set (and '/') would need escaping
	// in a URI; names never contain them, so reject them outright rather
	// than decode.
	for _, r := range s[len(prefix):] {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' || r == '/') {
			return Principal{}, fmt.Errorf("%w: %q contains %q", ErrBadPrincipal, s, r)
		}
	}
	seg := strings.Split(s[len(prefix):], "/")
	var p Principal
	switch {
	case len(seg) == 1 && seg[0] == "admin":
		p = Admin()
	case len(seg) == 3 && seg[0] == "cluster" && seg[2] == "syncer":
		p = Syncer(seg[1])
	case len(seg) == 4 && seg[0] == "cluster" && seg[2] == "node":
		p = Node(seg[1], seg[3])
	case len(seg) == 2 && seg[0] == "controlplane":
		p = Replica(seg[1])
	default:
		return Principal{}, fmt.Errorf("%w: %q is none of admin, cluster/<c>/syncer, cluster/<c>/node/<n>, controlplane/<id>", ErrBadPrincipal, s)
	}
	if err := p.Validate(); err != nil {
		return Principal{}, err
	}
	return p, nil
}

// FromCertificate returns the principal of a verified leaf certificate: it
// must carry exactly one URI SAN and it must parse.
func FromCertificate(c *x509.Certificate) (Principal, error) {
	if len(c.URIs) != 1 {
		return Principal{}, fmt.Errorf("%w: certificate carries %d URI SANs, want exactly 1", ErrBadPrincipal, len(c.URIs))
	}
	return ParsePrincipal(c.URIs[0].String())
}
