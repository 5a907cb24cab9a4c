package policy

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/fedmesh/fedmesh/federation/identity"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// EndpointKey names an endpoint (a pod) in the federation.
type EndpointKey struct {
	Cluster, Namespace, Name string
}

func (k EndpointKey) String() string { return k.Cluster + "/" + k.Namespace + "/" + k.Name }

func compareEndpointKeys(a, b EndpointKey) int {
	if c := strings.Compare(a.Cluster, b.Cluster); c != 0 {
		return c
	}
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

func comparePolicyKeys(a, b PolicyKey) int {
	if c := strings.Compare(a.Cluster, b.Cluster); c != 0 {
		return c
	}
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

type namedPort struct {
	name  string
	proto uint8
	port  uint16
}

// endpoint is the compiler's view of a fedmeshv1.Endpoint.
type endpoint struct {
	key        EndpointKey
	node       string
	labels     labels.Set
	nsLabels   labels.Set
	namedPorts []namedPort
	ips        []netip.Addr
	identity   uint32
	local      bool
	group      *group
}

func protoNumber(p fedmeshv1.Protocol) uint8 {
	switch p {
	case fedmeshv1.Protocol_PROTOCOL_UDP:
		return ProtoUDP
	case fedmeshv1.Protocol_PROTOCOL_SCTP:
		return ProtoSCTP
	case fedmeshv1.Protocol_PROTOCOL_ICMP:
		return ProtoICMP
	default:
		return ProtoTCP
	}
}

// ProtoFromAPI maps an API protocol to its IP protocol number (TCP when
// unspecified, ICMP for ICMP; callers pick ICMPv6 by address family).
func ProtoFromAPI(p fedmeshv1.Protocol) uint8 { return protoNumber(p) }

func newEndpoint(ep *fedmeshv1.Endpoint) *endpoint {
	e := &endpoint{
		key:      EndpointKey{Cluster: ep.GetCluster(), Namespace: ep.GetNamespace(), Name: ep.GetName()},
		node:     ep.GetNode(),
		labels:   copySet(ep.GetLabels()),
		nsLabels: copySet(ep.GetNamespaceLabels()),
		identity: ep.GetIdentity(),
	}
	for _, np := range ep.GetNamedPorts() {
		if np.GetName() == "" || np.GetPort() == 0 || np.GetPort() > 65535 {
			continue
		}
		e.namedPorts = append(e.namedPorts, namedPort{name: np.GetName(), proto: protoNumber(np.GetProtocol()), port: uint16(np.GetPort())})
	}
	slices.SortFunc(e.namedPorts, func(a, b namedPort) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		return int(a.proto) - int(b.proto)
	})
	for _, s := range ep.GetIps() {
		if a, err := netip.ParseAddr(s); err == nil {
			e.ips = append(e.ips, a.Unmap())
		}
	}
	slices.SortFunc(e.ips, func(a, b netip.Addr) int { return a.Compare(b) })
	e.ips = slices.Compact(e.ips)
	return e
}

func copySet(m map[string]string) labels.Set {
	s := make(labels.Set, len(m))
	for k, v := range m {
		s[k] = v
	}
	return s
}

func setString(s labels.Set) string { return identity.New(s).String() }

// groupKey is everything selectors look at: endpoints with equal keys are
// selected by exactly the same policies and peers.
func (e *endpoint) groupKey() string {
	return e.key.Cluster + "\x00" + e.key.Namespace + "\x00" + setString(e.labels) + "\x00" + setString(e.nsLabels)
}

// resolve returns the port number the endpoint gives name for proto.
func (e *endpoint) resolve(name string, proto uint8) (uint16, bool) {
	for _, np := range e.namedPorts {
		if np.name == name && np.proto == proto {
			return np.port, true
		}
	}
	return 0, false
}

func (e *endpoint) sameAs(o *endpoint) bool {
	return e.key == o.key && e.node == o.node && e.identity == o.identity && e.local == o.local &&
		labels.Equals(e.labels, o.labels) && labels.Equals(e.nsLabels, o.nsLabels) &&
		slices.Equal(e.namedPorts, o.namedPorts) && slices.Equal(e.ips, o.ips)
}

// portSpec is one entry of a rule's ports: a protocol with a range, or a
// named port resolved per destination pod.
type portSpec struct {
	proto uint8
	name  string // named port when set
	ports PortRange
}

func buildPorts(ports []networkingv1.NetworkPolicyPort) []portSpec {
	var out []portSpec
	for _, p := range ports {
		ps := portSpec{proto: ProtoTCP, ports: AllPorts}
		if p.Protocol != nil {
			switch *p.Protocol {
			case corev1.ProtocolTCP:
			case corev1.ProtocolUDP:
				ps.proto = ProtoUDP
			case corev1.ProtocolSCTP:
				ps.proto = ProtoSCTP
			default:
				continue // matches nothing
			}
		}
		if p.Port != nil {
			if p.Port.Type == intstr.String {
				if p.Port.StrVal == "" {
					continue
				}
				ps.name = p.Port.StrVal
			} else {
				n := p.Port.IntVal
				if n < 1 || n > 65535 {
					continue
				}
				ps.ports = PortRange{First: uint16(n), Last: uint16(n)}
				if p.EndPort != nil && *p.EndPort >= n && *p.EndPort <= 65535 {
					ps.ports.Last = uint16(*p.EndPort)
				}
			}
		}
		out = append(out, ps)
	}
	return out
}

// selector converts a Kubernetes selector; one that does not parse matches
// nothing (validation rejects it earlier; the compiler must not guess).
func selector(s *metav1.LabelSelector) labels.Selector {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return labels.Nothing()
	}
	return sel
}

type cidrPeer struct {
	prefix netip.Prefix
	except []netip.Prefix
}

func (c *cidrPeer) contains(a netip.Addr) bool {
	if !a.IsValid() || !c.prefix.Contains(a) {
		return false
	}
	for _, x := range c.except {
		if x.Contains(a) {
			return false
		}
	}
	return true
}

func buildCIDR(b *networkingv1.IPBlock) (cidrPeer, bool) {
	p, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return cidrPeer{}, false
	}
	c := cidrPeer{prefix: p.Masked()}
	for _, s := range b.Except {
		x, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		c.except = append(c.except, x.Masked())
	}
	return c, true
}
