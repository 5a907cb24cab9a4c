package policy

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	"sigs.k8s.io/yaml"
)

// decider is the compact form of a TieredVerdict that testdata/tiers.txt
// rows expect: every Pass on the way, then the deciding layer, e.g.
// "pass(admin:c1/p:r)+np:allow", "baseline:federated/b:[0]:Deny", "default".
func decider(v TieredVerdict) string {
	var b strings.Builder
	for _, p := range v.Passed {
		fmt.Fprintf(&b, "pass(%s:%s:%s)+", layerOfTier(p.Tier), p.Policy, ruleLabel(p))
	}
	switch {
	case v.NotEnforced:
		b.WriteString("none")
	case v.Layer == LayerAdmin || v.Layer == LayerBaseline:
		fmt.Fprintf(&b, "%s:%s:%s:%s", v.Layer, v.Rule.Policy, ruleLabel(v.Rule), v.Rule.Action)
	case v.Layer == LayerNetworkPolicy:
		if v.Allowed {
			b.WriteString("np:allow")
		} else {
			b.WriteString("np:deny")
		}
	default:
		b.WriteString("default")
	}
	return b.String()
}

func layerOfTier(t cnpv1.Tier) Layer {
	if t == cnpv1.AdminTier {
		return LayerAdmin
	}
	return LayerBaseline
}

func ruleLabel(r TierRule) string {
	if r.Name != "" {
		return r.Name
	}
	return "[" + strconv.Itoa(r.Index) + "]"
}

// upstreamTierTests are the ShortNames of every network-policy-api
// conformance test (conformance/tests) of the Admin and Baseline tiers and
// their NetworkPolicy integration; testdata/tiers.txt mirrors each one.
var upstreamTierTests = []string{
	"CNPAdminTierIntegration", "CNPAdminTierPriorityField", "CNPAdminTierGress",
	"CNPAdminTierIngressTCP", "CNPAdminTierIngressUDP", "CNPAdminTierIngressSCTP",
	"CNPAdminTierEgressTCP", "CNPAdminTierEgressUDP", "CNPAdminTierEgressSCTP",
	"CNPAdminTierEgressInlineCIDRPeers", "CNPAdminTierIngressNamedPort",
	"CNPAdminTierEgressNamedPort", "CNPAdminTierEgressNodePeers",
	"CNPBaselineTierGress",
	"CNPBaselineTierIngressTCP", "CNPBaselineTierIngressUDP", "CNPBaselineTierIngressSCTP",
	"CNPBaselineTierEgressTCP", "CNPBaselineTierEgressUDP", "CNPBaselineTierEgressSCTP",
	"CNPBaselineTierEgressInlineCIDRPeers", "CNPBaselineTierIngressNamedPort",
	"CNPBaselineTierEgressNamedPort", "CNPBaselineTierEgressNodePeers",
}

// TestTiersConformanceTable runs testdata/tiers.txt: each row's verdict,
// and the deciders it names, must match Tiers.Explain.
func TestTiersConformanceTable(t *testing.T) {
	f, err := os.Open("testdata/tiers.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var (
		w                 *confWorld
		tiers             *Tiers
		caseName, cite    string
		rows, lineNo      int
		heredoc           []string
		inDoc             bool
		docKind, docClust string
		cited             = map[string]bool{}
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
			switch docKind {
			case "policy":
				var np networkingv1.NetworkPolicy
				if err := yaml.UnmarshalStrict(doc, &np); err != nil {
					t.Fatalf("line %d: %v", lineNo, err)
				}
				w.e.UpsertNetworkPolicy(&NetworkPolicy{Cluster: docClust, Policy: np})
			case "cnp":
				var cnp cnpv1.ClusterNetworkPolicy
				if err := yaml.UnmarshalStrict(doc, &cnp); err != nil {
					t.Fatalf("line %d: %v", lineNo, err)
				}
				if err := tiers.Upsert(&ClusterPolicy{Cluster: docClust, Name: cnp.Name, Spec: cnp.Spec}); err != nil {
					t.Fatalf("line %d: %v", lineNo, err)
				}
			case "fedcnp":
				var cp ClusterPolicy
				if err := yaml.UnmarshalStrict(doc, &cp); err != nil {
					t.Fatalf("line %d: %v", lineNo, err)
				}
				if err := tiers.Upsert(&cp); err != nil {
					t.Fatalf("line %d: %v", lineNo, err)
				}
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
			w, tiers = newConfWorld(t), NewTiers()
		case "cite":
			cite = strings.TrimSpace(strings.TrimPrefix(line, "cite"))
		case "policy", "cnp", "fedcnp":
			if cite == "" {
				t.Fatalf("line %d: case %s has no cite", lineNo, caseName)
			}
			docKind, docClust = fields[0], ""
			if docKind != "fedcnp" {
				docClust = fields[1]
			}
			inDoc, heredoc = true, nil
		case "delete":
			parts := strings.Split(fields[1], "/")
			w.e.DeletePolicy(PolicyKey{Cluster: parts[0], Namespace: parts[1], Name: parts[2]})
		case "deletecnp":
			cl, name, _ := strings.Cut(fields[1], "/")
			if cl == "federated" {
				cl = ""
			}
			tiers.Delete(ClusterPolicyKey{Cluster: cl, Name: name})
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
		case "house":
			// house C/NS NAME: the upstream conformance label
			// conformance-house=NAME on the namespace and on each of its pods.
			parts := strings.Split(fields[1], "/")
			for key, ep := range w.eps {
				if key.Cluster == parts[0] && key.Namespace == parts[1] {
					ep.NamespaceLabels["conformance-house"] = fields[2]
					ep.Labels["conformance-house"] = fields[2]
					w.put(t, ep)
				}
			}
		case "namedport":
			// namedport C/NS/POD NAME:PORT/PROTO: a container port of an
			// existing pod, as upstream's pods declare web (80/TCP) and
			// dns (53/UDP).
			parts := strings.Split(fields[1], "/")
			ep := w.eps[EndpointKey{parts[0], parts[1], parts[2]}]
			if ep == nil {
				t.Fatalf("line %d: unknown endpoint %s", lineNo, fields[1])
			}
			name, rest, _ := strings.Cut(fields[2], ":")
			num, proto, _ := strings.Cut(rest, "/")
			n, err := strconv.Atoi(num)
			if err != nil {
				t.Fatalf("line %d: named port: %v", lineNo, err)
			}
			ep.NamedPorts = append(ep.NamedPorts, &fedmeshv1.NamedPort{Name: name, Port: uint32(n),
				Protocol: fedmeshv1.Protocol(fedmeshv1.Protocol_value["PROTOCOL_"+strings.ToUpper(proto)])})
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
			if rest, ok := strings.CutPrefix(strings.TrimSpace(comment), "upstream "); ok {
				name, _, _ := strings.Cut(rest, ":")
				cited[name] = true
			}
			w.e.Recompute()
			checkTierRow(t, w, tiers, lineNo, caseName, fields[1:])
		default:
			t.Fatalf("line %d: unknown directive %q", lineNo, fields[0])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if inDoc {
		t.Fatalf("unterminated heredoc at end of file")
	}
	if rows < 350 {
		t.Fatalf("tiers table has %d rows, want at least 350", rows)
	}
	for _, name := range upstreamTierTests {
		if !cited[name] {
			t.Errorf("no row cites upstream conformance test %s", name)
		}
	}
	t.Logf("%d tier rows passed", rows)
}

func (w *confWorld) flowTarget(t *testing.T, s string) Target {
	t.Helper()
	if a, err := netip.ParseAddr(s); err == nil {
		return Target{IP: a}
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
	return Target{Endpoint: &k, IP: a}
}

// checkTierRow checks "SRC DST PROTO PORT allow|deny [eg=DECIDER] [in=DECIDER]".
func checkTierRow(t *testing.T, w *confWorld, tiers *Tiers, lineNo int, caseName string, f []string) {
	t.Helper()
	src, dst := w.flowTarget(t, f[0]), w.flowTarget(t, f[1])
	proto, ok := map[string]uint8{"tcp": ProtoTCP, "udp": ProtoUDP, "sctp": ProtoSCTP, "icmp": ProtoICMP}[f[2]]
	if !ok {
		t.Fatalf("line %d: unknown protocol %q", lineNo, f[2])
	}
	if proto == ProtoICMP && dst.IP.Is6() {
		proto = ProtoICMPv6
	}
	port, err := strconv.Atoi(f[3])
	if err != nil {
		t.Fatalf("line %d: port: %v", lineNo, err)
	}
	if f[4] != "allow" && f[4] != "deny" {
		t.Fatalf("line %d: verdict %q is neither allow nor deny", lineNo, f[4])
	}
	x, err := tiers.Explain(w.e, Flow{Src: src, Dst: dst, Proto: proto, Port: uint16(port)})
	if err != nil {
		t.Fatalf("line %d (%s): %v", lineNo, caseName, err)
	}
	if want := f[4] == "allow"; x.Allowed != want {
		t.Errorf("line %d (%s): %s -> %s %s/%d: allowed=%v, want %v\n  %s\n  %s", lineNo, caseName, f[0], f[1], f[2], port, x.Allowed, want, x.Egress, x.Ingress)
	}
	for _, kv := range f[5:] {
		k, want := parseKV(kv)
		var got string
		switch k {
		case "eg":
			got = decider(x.Egress)
		case "in":
			got = decider(x.Ingress)
		default:
			t.Fatalf("line %d: unknown row field %q", lineNo, kv)
		}
		if got != want {
			t.Errorf("line %d (%s): %s -> %s %s/%d: %s decided by %s, want %s\n  %s\n  %s", lineNo, caseName, f[0], f[1], f[2], port, k, got, want, x.Egress, x.Ingress)
		}
	}
}
