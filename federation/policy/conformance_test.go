package policy

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/fedmesh/fedmesh/federation/identity"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	"google.golang.org/protobuf/encoding/protojson"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// confWorld is the federation every conformance case starts from (see the
// header of testdata/conformance.txt).
type confWorld struct {
	e     *Engine
	alloc *identity.Allocator
	eps   map[EndpointKey]*fedmeshv1.Endpoint
	// rel and polKeys assign identities as the control plane does: a
	// filtered label key counts while some policy selects on it.
	rel     *identity.Relevance
	polKeys map[PolicyKey][]string
}

var (
	confClusters = []*fedmeshv1.Cluster{
		{Name: "c1", Labels: map[string]string{"region": "eu", "env": "prod"}},
		{Name: "c2", Labels: map[string]string{"region": "us", "env": "prod"}},
		{Name: "c3", Labels: map[string]string{"region": "us", "env": "dev"}},
	}
	confNamespaces = []string{"x", "y", "z"}
	confPods       = []string{"a", "b", "c"}
)

func upstreamNamedPorts() []*fedmeshv1.NamedPort {
	var out []*fedmeshv1.NamedPort
	for _, port := range []uint32{80, 81} {
		for _, p := range []struct {
			name  string
			proto fedmeshv1.Protocol
		}{{"tcp", fedmeshv1.Protocol_PROTOCOL_TCP}, {"udp", fedmeshv1.Protocol_PROTOCOL_UDP}, {"sctp", fedmeshv1.Protocol_PROTOCOL_SCTP}} {
			out = append(out, &fedmeshv1.NamedPort{Name: fmt.Sprintf("serve-%d-%s", port, p.name), Port: port, Protocol: p.proto})
		}
	}
	return out
}

func newConfWorld(t testing.TB) *confWorld {
	w := &confWorld{e: NewEngine(), alloc: identity.NewAllocator(), eps: map[EndpointKey]*fedmeshv1.Endpoint{},
		rel: identity.NewRelevance(nil), polKeys: map[PolicyKey][]string{}}
	for ci, c := range confClusters {
		w.e.UpsertCluster(c)
		for ni, ns := range confNamespaces {
			for pi, pod := range confPods {
				w.put(t, &fedmeshv1.Endpoint{
					Cluster: c.Name, Namespace: ns, Name: pod,
					Labels:          map[string]string{"pod": pod},
					NamespaceLabels: map[string]string{"ns": ns, "kubernetes.io/metadata.name": ns},
					NamedPorts:      upstreamNamedPorts(),
					Ips:             []string{fmt.Sprintf("10.%d.%d.%d", ci+1, ni, pi+1), fmt.Sprintf("fd00:%d:%d::%d", ci+1, ni, pi+1)},
				})
			}
		}
	}
	return w
}

// put (re)assigns the endpoint's identity from its labels and upserts it.
func (w *confWorld) put(t testing.TB, ep *fedmeshv1.Endpoint) {
	t.Helper()
	if ep.Identity != 0 {
		w.alloc.Release(ep.Identity)
	}
	id, _, err := w.alloc.Acquire(identity.For(ep.Cluster, ep.Namespace, ep.Labels, w.rel))
	if err != nil {
		t.Fatal(err)
	}
	ep.Identity = id
	w.eps[EndpointKey{ep.Cluster, ep.Namespace, ep.Name}] = ep
	w.e.UpsertEndpoint(ep)
}

// policy upserts (np set) or deletes a policy, counting the label keys it
// selects on for identity and splitting or merging identities as the
// control plane's FSM does.
func (w *confWorld) policy(t *testing.T, key PolicyKey, np *NetworkPolicy) {
	t.Helper()
	var keys []string
	if np != nil {
		p, err := ToProto(np)
		if err != nil {
			t.Fatal(err)
		}
		keys = PodLabelKeys(p)
		w.e.UpsertNetworkPolicy(np)
	} else {
		w.e.DeletePolicy(key)
	}
	changed := append(w.rel.Select(keys), w.rel.Unselect(w.polKeys[key])...)
	w.polKeys[key] = keys
	if len(changed) == 0 {
		return
	}
	var ks []EndpointKey
	for k := range w.eps {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, compareEndpointKeys)
	hs := make([]identity.Holder, len(ks))
	for i, k := range ks {
		ep := w.eps[k]
		hs[i] = identity.Holder{ID: ep.Identity, Key: identity.For(ep.Cluster, ep.Namespace, ep.Labels, w.rel)}
	}
	ids, err := w.alloc.Rekey(hs)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range ks {
		if ep := w.eps[k]; ep.Identity != ids[i] {
			ep.Identity = ids[i]
			w.e.UpsertEndpoint(ep)
		}
	}
}

func parseKV(s string) (string, string) {
	k, v, _ := strings.Cut(s, "=")
	return k, v
}

// TestConformanceTable runs testdata/conformance.txt: each row's verdict
// must match Explain, and Evaluate on the incrementally compiled rules must
// agree with Explain on verdict and deciding rule.
func TestConformanceTable(t *testing.T) {
	f, err := os.Open("testdata/conformance.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var (
		w              *confWorld
		caseName, cite string
		rows, lineNo   int
		heredoc        []string
		inDoc          bool
		docCluster     string
		docFederated   bool
	)
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		if inDoc {
			if strings.TrimSpace(line) != ">>" {
				heredoc = append(heredoc, line)
				continue
			}
			inDoc = false
			doc := []byte(strings.Join(heredoc, "\n"))
			if docFederated {
				js, err := yaml.YAMLToJSON(doc)
				if err != nil {
					t.Fatalf("line %d: %v", lineNo, err)
				}
				var p fedmeshv1.Policy
				if err := protojson.Unmarshal(js, &p); err != nil {
					t.Fatalf("line %d: %v", lineNo, err)
				}
				np, err := FromProto(&p)
				if err != nil {
					t.Fatalf("line %d: %v", lineNo, err)
				}
				w.policy(t, np.Key(), np)
			} else {
				var np networkingv1.NetworkPolicy
				if err := yaml.UnmarshalStrict(doc, &np); err != nil {
					t.Fatalf("line %d: %v", lineNo, err)
				}
				kp := &NetworkPolicy{Cluster: docCluster, Policy: np}
				w.policy(t, kp.Key(), kp)
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		body, comment, _ := strings.Cut(line, "#")
		fields := strings.Fields(body)
		switch fields[0] {
		case "case":
			caseName, cite = fields[1], ""
			w = newConfWorld(t)
		case "cite":
			cite = strings.TrimSpace(strings.TrimPrefix(line, "cite"))
		case "policy", "fedpolicy":
			if cite == "" {
				t.Fatalf("line %d: case %s has no cite", lineNo, caseName)
			}
			docFederated = fields[0] == "fedpolicy"
			if !docFederated {
				docCluster = fields[1]
			}
			inDoc, heredoc = true, nil
		case "delete":
			parts := strings.Split(fields[1], "/")
			k := PolicyKey{Cluster: parts[0], Namespace: parts[1], Name: parts[2]}
			if k.Cluster == "federated" {
				k.Cluster = ""
			}
			w.policy(t, k, nil)
		case "endpoint":
			parts := strings.Split(fields[1], "/")
			ci := int(parts[0][1] - '1')
			ep := &fedmeshv1.Endpoint{Cluster: parts[0], Namespace: parts[1], Name: parts[2], Labels: map[string]string{},
				NamespaceLabels: map[string]string{"ns": parts[1], "kubernetes.io/metadata.name": parts[1]},
				Ips:             []string{fmt.Sprintf("10.%d.9.%d", ci+1, len(w.eps)), fmt.Sprintf("fd00:%d:9::%d", ci+1, len(w.eps))}}
			for _, kv := range fields[2:] {
				k, v := parseKV(kv)
				if k != "port" {
					ep.Labels[k] = v
					continue
				}
				name, rest, _ := strings.Cut(v, ":")
				num, proto, _ := strings.Cut(rest, "/")
				n, _ := strconv.Atoi(num)
				ep.NamedPorts = append(ep.NamedPorts, &fedmeshv1.NamedPort{Name: name, Port: uint32(n),
					Protocol: fedmeshv1.Protocol(fedmeshv1.Protocol_value["PROTOCOL_"+strings.ToUpper(proto)])})
			}
			w.put(t, ep)
		case "podlabel":
			parts := strings.Split(fields[1], "/")
			ep := w.eps[EndpointKey{parts[0], parts[1], parts[2]}]
			k, v := parseKV(fields[2])
			ep.Labels[k] = v
			w.put(t, ep)
		case "nslabel":
			parts := strings.Split(fields[1], "/")
			k, v := parseKV(fields[2])
			for key, ep := range w.eps {
				if key.Cluster == parts[0] && key.Namespace == parts[1] {
					ep.NamespaceLabels[k] = v
					w.e.UpsertEndpoint(ep)
				}
			}
		case "row":
			if strings.TrimSpace(comment) == "" {
				t.Fatalf("line %d: row without a cite comment", lineNo)
			}
			rows++
			w.e.Recompute()
			checkRow(t, w, lineNo, caseName, fields[1:])
		default:
			t.Fatalf("line %d: unknown directive %q", lineNo, fields[0])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if rows < 150 {
		t.Fatalf("conformance table has %d rows, want at least 150", rows)
	}
	t.Logf("%d conformance rows passed", rows)
}

func (w *confWorld) target(t *testing.T, s string) (Target, uint32, netip.Addr, *Compiled) {
	t.Helper()
	if a, err := netip.ParseAddr(s); err == nil {
		return Target{IP: a}, identity.World, a, nil
	}
	name, fam, _ := strings.Cut(s, "@")
	parts := strings.Split(name, "/")
	k := EndpointKey{parts[0], parts[1], parts[2]}
	ep := w.eps[k]
	if ep == nil {
		t.Fatalf("unknown endpoint %s", s)
	}
	a := netip.MustParseAddr(ep.Ips[0])
	if fam == "v6" {
		a = netip.MustParseAddr(ep.Ips[1])
	}
	c, ok := w.e.Rules(k)
	if !ok {
		t.Fatalf("no compiled rules for %s", k)
	}
	return Target{Endpoint: &k, IP: a}, ep.Identity, a, c
}

func checkRow(t *testing.T, w *confWorld, lineNo int, caseName string, f []string) {
	t.Helper()
	src, sid, sip, sc := w.target(t, f[0])
	dst, did, dip, dc := w.target(t, f[1])
	proto := map[string]uint8{"tcp": ProtoTCP, "udp": ProtoUDP, "sctp": ProtoSCTP, "icmp": ProtoICMP}[f[2]]
	if proto == ProtoICMP && dip.Is6() {
		proto = ProtoICMPv6
	}
	port, _ := strconv.Atoi(f[3])
	want := f[4] == "allow"
	x, err := w.e.Explain(Flow{Src: src, Dst: dst, Proto: proto, Port: uint16(port)})
	if err != nil {
		t.Fatalf("line %d (%s): %v", lineNo, caseName, err)
	}
	if x.Allowed != want {
		t.Errorf("line %d (%s): %s -> %s %s/%d: allowed=%v, want %v\n  %s\n  %s", lineNo, caseName, f[0], f[1], f[2], port, x.Allowed, want, x.Egress, x.Ingress)
	}
	agree := func(c *Compiled, dir Direction, peer uint32, peerIP netip.Addr, v DirectionVerdict) {
		if c == nil {
			return
		}
		ok, id := c.Rules.Evaluate(dir, peer, peerIP, proto, uint16(port))
		origin, _ := c.Origin(id)
		if ok != v.Allowed || (v.Reason == ReasonRuleAllows && origin != v.Rule) {
			t.Errorf("line %d (%s): compiled %s verdict %v (rule %+v) disagrees with Explain: %s", lineNo, caseName, dir, ok, origin, v)
		}
	}
	agree(sc, Egress, did, dip, x.Egress)
	agree(dc, Ingress, sid, sip, x.Ingress)
}
