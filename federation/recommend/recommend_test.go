package recommend

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/fedmesh/fedmesh/federation/model"
	"github.com/fedmesh/fedmesh/federation/policy"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// world is a federation of pods for replaying flows against a
// recommendation with the real policy engine.
type world struct {
	pods []Workload
	e    *policy.Engine
}

func newWorld(t testing.TB, pods []Workload) *world {
	t.Helper()
	w := &world{pods: pods, e: policy.NewEngine()}
	clusters := map[string]bool{}
	for _, p := range pods {
		if p.External() {
			continue
		}
		if !clusters[p.Cluster] {
			clusters[p.Cluster] = true
			w.e.UpsertCluster(&fedmeshv1.Cluster{Name: p.Cluster, Labels: map[string]string{"env": "prod"}})
		}
		w.e.UpsertEndpoint(&fedmeshv1.Endpoint{
			Cluster: p.Cluster, Namespace: p.Namespace, Name: p.Name, Node: "n1",
			Ips: []string{p.IP.String()}, Labels: p.Labels,
			NamespaceLabels: map[string]string{NamespaceNameLabel: p.Namespace},
			Identity:        identityOf(p),
		})
	}
	return w
}

// identityOf gives every distinct (cluster, namespace, workload labels) its
// own identity, as the control plane's allocator does.
var identities = map[string]uint32{}

func identityOf(p Workload) uint32 {
	k := p.Cluster + "/" + p.Namespace + "/" + canonical(workloadLabels(p.Labels))
	if id, ok := identities[k]; ok {
		return id
	}
	id := uint32(1000 + len(identities))
	identities[k] = id
	return id
}

func (w *world) apply(t testing.TB, res Result) {
	t.Helper()
	for _, m := range res.Policies {
		// Through YAML, as `fedctl policy apply -f` reads it.
		out, err := yaml.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var back model.FederatedNetworkPolicy
		if err := yaml.UnmarshalStrict(out, &back); err != nil {
			t.Fatalf("recommendation does not read back: %v\n%s", err, out)
		}
		p := model.PolicyFromFederated(&back)
		if err := model.ValidatePolicy(p); err != nil {
			t.Fatalf("recommended policy %s is invalid: %v\n%s", m.Name, err, out)
		}
		if err := w.e.UpsertPolicy(p); err != nil {
			t.Fatalf("engine refuses recommended policy %s: %v", m.Name, err)
		}
	}
}

func target(p Workload) policy.Target {
	if p.External() {
		return policy.Target{IP: p.IP}
	}
	return policy.Target{Endpoint: &policy.EndpointKey{Cluster: p.Cluster, Namespace: p.Namespace, Name: p.Name}}
}

func (w *world) allowed(t testing.TB, f Flow) (bool, string) {
	t.Helper()
	x, err := w.e.Explain(policy.Flow{Src: target(f.Src), Dst: target(f.Dst), Proto: f.Proto, Port: f.Port})
	if err != nil {
		t.Fatalf("explain %s: %v", flowString(f), err)
	}
	return x.Allowed, x.Egress.String() + " / " + x.Ingress.String()
}

func flowString(f Flow) string {
	side := func(w Workload) string {
		if w.External() {
			return w.IP.String()
		}
		return w.Cluster + "/" + w.Namespace + "/" + w.Name
	}
	return fmt.Sprintf("%s -> %s %d/%d", side(f.Src), side(f.Dst), f.Proto, f.Port)
}

func pod(cluster, ns, name, ip string, lbls ...string) Workload {
	m := map[string]string{}
	for i := 0; i+1 < len(lbls); i += 2 {
		m[lbls[i]] = lbls[i+1]
	}
	return Workload{Cluster: cluster, Namespace: ns, Name: name, Labels: m, IP: netip.MustParseAddr(ip)}
}

func TestRecommendationAllowsWhatWasObservedAndNothingElse(t *testing.T) {
	var (
		fe1      = pod("a", "demo", "frontend-1", "10.1.0.1", "app", "frontend", "pod-template-hash", "abc")
		fe2      = pod("a", "demo", "frontend-2", "10.1.0.2", "app", "frontend", "pod-template-hash", "def")
		be       = pod("a", "demo", "backend-1", "10.1.0.3", "app", "backend")
		beCanary = pod("a", "demo", "backend-canary", "10.1.0.4", "app", "backend", "track", "canary")
		db       = pod("a", "demo", "db-0", "10.1.0.5", "app", "db", "statefulset.kubernetes.io/pod-name", "db-0")
		idle     = pod("a", "demo", "idle", "10.1.0.6", "app", "idle")
		client   = pod("a", "shop", "client", "10.1.0.7", "app", "client")
		dns      = pod("a", "kube-system", "coredns", "10.1.0.8", "k8s-app", "kube-dns")
		cacheB   = pod("b", "demo", "cache-0", "10.2.0.1", "app", "cache")
		frontB   = pod("b", "demo", "frontend-b", "10.2.0.2", "app", "frontend")
		outside  = Workload{IP: netip.MustParseAddr("192.0.2.10")}
	)
	observed := []Flow{
		{Src: fe1, Dst: be, Proto: policy.ProtoTCP, Port: 8080},
		{Src: fe2, Dst: be, Proto: policy.ProtoTCP, Port: 8080},
		{Src: be, Dst: db, Proto: policy.ProtoTCP, Port: 5432},
		{Src: client, Dst: fe1, Proto: policy.ProtoTCP, Port: 80},
		{Src: be, Dst: cacheB, Proto: policy.ProtoTCP, Port: 6379},
		{Src: be, Dst: outside, Proto: policy.ProtoTCP, Port: 443},
		{Src: fe1, Dst: dns, Proto: policy.ProtoUDP, Port: 53},
		{Src: outside, Dst: fe2, Proto: policy.ProtoTCP, Port: 80},
		{Src: fe1, Dst: be, Proto: policy.ProtoICMP},
	}
	all := []Workload{fe1, fe2, be, beCanary, db, idle, client, dns, cacheB, frontB, outside}
	res, err := Recommend(observed, Options{Namespace: "demo", Cluster: "a", Known: all})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Unexpressible) != 1 || res.Unexpressible[0].Proto != policy.ProtoICMP {
		t.Errorf("unexpressible = %v, want the one ICMP flow", res.Unexpressible)
	}
	w := newWorld(t, all)
	w.apply(t, res)
	for _, f := range observed {
		if f.Proto == policy.ProtoICMP {
			continue
		}
		if ok, why := w.allowed(t, f); !ok {
			t.Errorf("observed %s is denied by the recommendation: %s", flowString(f), why)
		}
	}
	for _, tc := range []struct {
		name    string
		f       Flow
		allowed bool
	}{
		{"a workload that was never a source of this pair", Flow{Src: fe1, Dst: db, Proto: policy.ProtoTCP, Port: 5432}, false},
		{"the reverse of an observed flow", Flow{Src: be, Dst: fe1, Proto: policy.ProtoTCP, Port: 80}, false},
		{"an observed pair on another port", Flow{Src: fe1, Dst: be, Proto: policy.ProtoTCP, Port: 8081}, false},
		{"an observed port over another protocol", Flow{Src: fe1, Dst: be, Proto: policy.ProtoUDP, Port: 8080}, false},
		{"another namespace's client to another workload", Flow{Src: client, Dst: be, Proto: policy.ProtoTCP, Port: 8080}, false},
		{"a superset workload (canary) is not the observed one", Flow{Src: fe1, Dst: beCanary, Proto: policy.ProtoTCP, Port: 8080}, false},
		{"an idle workload is isolated", Flow{Src: idle, Dst: dns, Proto: policy.ProtoUDP, Port: 53}, false},
		{"the same labels in another cluster are another peer", Flow{Src: frontB, Dst: be, Proto: policy.ProtoTCP, Port: 8080}, false},
		{"to an outside address never seen", Flow{Src: be, Dst: Workload{IP: netip.MustParseAddr("192.0.2.11")}, Proto: policy.ProtoTCP, Port: 443}, false},
		{"another pod of an observed workload (rollout) is the same workload", Flow{Src: fe2, Dst: dns, Proto: policy.ProtoUDP, Port: 53}, true},
		{"traffic not touching the namespace is untouched", Flow{Src: client, Dst: dns, Proto: policy.ProtoUDP, Port: 53}, true},
		{"cluster b's namespace is not in scope with --cluster a", Flow{Src: frontB, Dst: cacheB, Proto: policy.ProtoTCP, Port: 9999}, true},
	} {
		if ok, why := w.allowed(t, tc.f); ok != tc.allowed {
			t.Errorf("%s: %s allowed=%v, want %v: %s", tc.name, flowString(tc.f), ok, tc.allowed, why)
		}
	}
}

// TestRandomReplay: on random populations and random observed traffic, the
// recommendation allows every observed flow and denies every flow between
// workloads that touches the namespace and was not observed (as workload
// pair, protocol and port).
func TestRandomReplay(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			var pods []Workload
			nss := []string{"demo", "other"}
			apps := []string{"a", "b", "c"}
			for i := range 12 {
				cluster := []string{"x", "y"}[rng.IntN(2)]
				lbls := []string{"app", apps[rng.IntN(len(apps))]}
				if rng.IntN(3) == 0 {
					lbls = append(lbls, "tier", "t"+fmt.Sprint(rng.IntN(2)))
				}
				pods = append(pods, pod(cluster, nss[rng.IntN(2)], fmt.Sprintf("p%d", i), fmt.Sprintf("10.%d.0.%d", 1+i%2, i+1), lbls...))
			}
			pods = append(pods, Workload{IP: netip.MustParseAddr("192.0.2.1")}, Workload{IP: netip.MustParseAddr("192.0.2.2")})
			ports := []uint16{80, 443, 5432}
			protos := []uint8{policy.ProtoTCP, policy.ProtoUDP}
			randomFlow := func() Flow {
				return Flow{Src: pods[rng.IntN(len(pods))], Dst: pods[rng.IntN(len(pods))], Proto: protos[rng.IntN(2)], Port: ports[rng.IntN(len(ports))]}
			}
			var observed []Flow
			for range 15 {
				if f := randomFlow(); !(f.Src.External() && f.Dst.External()) {
					observed = append(observed, f)
				}
			}
			res, err := Recommend(observed, Options{Namespace: "demo", Known: pods})
			if err != nil {
				t.Fatal(err)
			}
			w := newWorld(t, pods)
			w.apply(t, res)
			// A flow counts as observed when some observed flow has the same
			// source workload, destination workload, protocol and port.
			sideKey := func(p Workload) string {
				if p.External() {
					return p.IP.String()
				}
				return p.Cluster + "/" + p.Namespace + "/" + canonical(workloadLabels(p.Labels))
			}
			key := func(f Flow) string { return fmt.Sprint(sideKey(f.Src), ">", sideKey(f.Dst), f.Proto, f.Port) }
			seen := map[string]bool{}
			for _, f := range observed {
				seen[key(f)] = true
			}
			touches := func(p Workload) bool { return !p.External() && p.Namespace == "demo" }
			for _, src := range pods {
				for _, dst := range pods {
					if src.External() && dst.External() {
						continue
					}
					for _, proto := range protos {
						for _, port := range ports {
							f := Flow{Src: src, Dst: dst, Proto: proto, Port: port}
							ok, why := w.allowed(t, f)
							switch {
							case seen[key(f)] && !ok:
								t.Errorf("observed %s denied: %s", flowString(f), why)
							case !seen[key(f)] && (touches(src) || touches(dst)) && ok:
								t.Errorf("never observed %s allowed: %s", flowString(f), why)
							case !touches(src) && !touches(dst) && !ok:
								t.Errorf("%s does not touch the namespace but is denied: %s", flowString(f), why)
							}
						}
					}
				}
			}
		})
	}
}

func TestRecommendRefusesBadScope(t *testing.T) {
	for _, tc := range []struct {
		opts   Options
		errHas string
	}{
		{Options{}, "a namespace is required"},
		{Options{Namespace: "Not_A_Namespace"}, `namespace "Not_A_Namespace"`},
	} {
		if _, err := Recommend(nil, tc.opts); err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("Recommend(%+v) err = %v, want %q", tc.opts, err, tc.errHas)
		}
	}
}

func TestManifestsAreStableAndNamed(t *testing.T) {
	fe := pod("a", "demo", "fe", "10.1.0.1", "app", "Front_End")
	be := pod("a", "demo", "be", "10.1.0.2", "app", "backend")
	flows := []Flow{{Src: fe, Dst: be, Proto: policy.ProtoTCP, Port: 80}}
	one, _ := Recommend(flows, Options{Namespace: "demo"})
	two, _ := Recommend(flows, Options{Namespace: "demo"})
	a, _ := yaml.Marshal(one.Policies)
	b, _ := yaml.Marshal(two.Policies)
	if string(a) != string(b) {
		t.Fatalf("two runs differ:\n%s\n---\n%s", a, b)
	}
	var names []string
	for _, p := range one.Policies {
		names = append(names, p.Name)
	}
	if want := "recommended-isolate-a recommended-a-backend recommended-a-front-end"; strings.Join(names, " ") != want {
		t.Errorf("names %v, want %s", names, want)
	}
}
