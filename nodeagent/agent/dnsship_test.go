package agent_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/auth/authclient/tlstest"
	"github.com/fedmesh/fedmesh/controlplane/auth/ca"
	"github.com/fedmesh/fedmesh/federation/policy"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
	"github.com/fedmesh/fedmesh/nodeagent/dns"
	"github.com/fedmesh/fedmesh/nodeagent/flows"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// loopbackUpstream is a real DNS server on 127.0.0.1 (miekg/dns) serving
// api.example.com as a CNAME to edge.cdn.test, which has an A record.
func loopbackUpstream(t *testing.T, answer netip.Addr) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; q.Name == "api.example.com." && q.Qtype == mdns.TypeA {
			m.Answer = []mdns.RR{
				&mdns.CNAME{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeCNAME, Class: mdns.ClassINET, Ttl: 300}, Target: "edge.cdn.test."},
				&mdns.A{Hdr: mdns.RR_Header{Name: "edge.cdn.test.", Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: answer.AsSlice()},
			}
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// nodeDialOption is the mTLS identity of node n of cluster c, issued by the
// control plane's CA.
func nodeDialOption(t *testing.T, cp *tlstest.ControlPlane, p auth.Principal) grpc.DialOption {
	t.Helper()
	certPEM, keyPEM, err := cp.CA.Issue(ca.Leaf{ID: p.URI(), Usage: ca.UsageClient, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.NewCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(auth.ClientTLS(cp.CA.Pool(), cert)))
}

// A pod's queries through the node's real resolver (with the agent's
// policy by name) reach the control plane over the node's mTLS flow stream
// and GetDNS returns them with their verdicts, and the pod's next
// connection to the answered address is a flow record carrying the name it
// was resolved from (the queried name, at the end of a CNAME chain); a
// connection to an address the pod never resolved carries none.
func TestPodsQueryIsServedByGetDNSAndNamesItsFlowToTheAnsweredAddress(t *testing.T) {
	cp := tlstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := fedmeshv1.NewClusterServiceClient(cp.Admin).RegisterCluster(ctx, &fedmeshv1.RegisterClusterRequest{Cluster: &fedmeshv1.Cluster{Name: "a", PodCidrs: []string{"10.1.0.0/16"}}}); err != nil {
		t.Fatal(err)
	}
	node := auth.Node("a", "n1")
	dial := nodeDialOption(t, cp, node)
	client, err := agent.NewClient([]string{cp.Addr}, dial)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	nodeConn, err := grpc.NewClient(cp.Addr, dial)
	if err != nil {
		t.Fatal(err)
	}
	defer nodeConn.Close()
	if _, err := fedmeshv1.NewNodeServiceClient(nodeConn).RegisterNode(ctx, &fedmeshv1.RegisterNodeRequest{Node: &fedmeshv1.Node{Cluster: "a", Name: "n1", UnderlayIp: "198.18.0.1"}}); err != nil {
		t.Fatal(err)
	}

	// The agent's shipping path: flow reader and DNS log into one shipper.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	shipper := agent.NewFlowShipper(client, "a", "n1", reg, log)
	names := agent.NewNameCache(agent.NameCacheConfig{}, reg)
	go shipper.Run(ctx)
	dp := dataplane.NewMemory()
	const web = "a/demo/web"
	// The pod may reach api.example.com on TCP 443 only (policy by name).
	egress := nameEgress("api.example.com")
	if err := dp.Apply(ctx, &dataplane.Revision{Number: 1, Rules: map[string]policy.EndpointRules{web: {Identity: 256, Egress: egress}}}); err != nil {
		t.Fatal(err)
	}
	if err := dp.Attach(ctx, dataplane.Endpoint{ID: web, Interface: "veth-web"}); err != nil {
		t.Fatal(err)
	}
	dir := flows.NewDirectory()
	dir.UpsertEndpoint(&fedmeshv1.Endpoint{Cluster: "a", Namespace: "demo", Name: "web", Ips: []string{"10.1.1.11"}})
	go (&flows.Reader{Cluster: "a", Node: "n1", Dir: dir, Sink: shipper, Names: names}).Run(ctx, dp.Events())

	// The node's resolver, forwarding to a real DNS server on loopback,
	// with the agent's policy by name as its hook (the pod asks from
	// 127.0.0.1).
	answer := netip.MustParseAddr("192.0.2.80")
	up := loopbackUpstream(t, answer)
	np, err := agent.NewNamePolicy(agent.NamePolicyConfig{}, dp, nil, reg, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	np.Update(ctx, []agent.NamePod{{ID: web, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Egress: egress}})
	srv, err := dns.New(dns.Config{Listen: "127.0.0.1:0", Upstream: up},
		dns.Deps{Recorder: &agent.DNSLog{Cluster: "a", Node: "n1", Sink: shipper, Names: names},
			Hooks: []dns.Hook{np}, Pods: np, Logger: log, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ctx) }()

	// The pod asks for its allowed name, and for another.
	for name, rcode := range map[string]int{"api.example.com.": mdns.RcodeSuccess, "other.example.com.": mdns.RcodeRefused} {
		q := new(mdns.Msg)
		q.SetQuestion(name, mdns.TypeA)
		resp, err := mdns.ExchangeContext(ctx, q, srv.Addr().String())
		if err != nil || resp.Rcode != rcode {
			t.Fatalf("query %s through the resolver: %v (%v), want rcode %d", name, resp, err, rcode)
		}
	}
	// ... then connects to the answer, and to an address it never
	// resolved (which policy by name refuses).
	for dst, want := range map[string]dataplane.Verdict{"192.0.2.80": dataplane.Allow, "192.0.2.99": dataplane.Deny} {
		if v, _, _, err := dp.Process(web, policy.Egress, tcpSYN(netip.MustParseAddr("10.1.1.11"), netip.MustParseAddr(dst), 40000, 443)); err != nil || v != want {
			t.Fatalf("connect to %s: %v %v, want %v", dst, v, err, want)
		}
	}

	// GetDNS, as an admin, returns the pod's query.
	var rec *fedmeshv1.DNSRecord
	eventually(t, "GetDNS returns the pod's query", func() bool {
		rs, err := readDNS(ctx, cp.Admin, &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Pod: "demo/web", Name: "api.example.com"}})
		if err != nil {
			t.Fatalf("GetDNS: %v", err)
		}
		if len(rs) > 0 {
			rec = rs[0]
		}
		return len(rs) == 1
	})
	if rec.GetCluster() != "a" || rec.GetNode() != "n1" || rec.GetType() != "A" || rec.GetRcode() != "NOERROR" ||
		rec.GetVerdict() != fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_ALLOWED || rec.GetLearned() != 1 ||
		rec.GetSource() != "upstream" || rec.GetUpstream() != up || len(rec.GetAnswers()) != 2 || rec.GetAnswers()[1].GetAddr() != "192.0.2.80" ||
		rec.GetTtl() != 60 || rec.GetLatency().AsDuration() <= 0 {
		t.Errorf("stored record %v", rec)
	}

	refused, err := readDNS(ctx, cp.Admin, &fedmeshv1.GetDNSRequest{Filter: &fedmeshv1.DNSFilter{Verdict: fedmeshv1.DNSPolicyVerdict_DNS_POLICY_VERDICT_REFUSED}})
	if err != nil || len(refused) != 1 || refused[0].GetName() != "other.example.com." || refused[0].GetRcode() != "REFUSED" || refused[0].GetPod() != "web" {
		t.Errorf("refused queries %v (%v), want the pod's query for other.example.com", refused, err)
	}

	// GetFlows returns the connection to the answer with the name.
	eventually(t, "both flows stored", func() bool {
		fs, err := getAllFlows(ctx, cp.Admin)
		if err != nil {
			t.Fatalf("GetFlows: %v", err)
		}
		if len(fs) < 2 {
			return false
		}
		named := map[string]string{}
		for _, f := range fs {
			named[f.GetDestination().GetIp()] = f.GetDnsName()
		}
		if named["192.0.2.80"] != "api.example.com" || named["192.0.2.99"] != "" {
			t.Fatalf("flow names by destination %v, want api.example.com for the answered address only", named)
		}
		return true
	})
	if shipper.DroppedDNS() != 0 || shipper.Dropped() != 0 {
		t.Errorf("dropped %d DNS records and %d flows with the replica up", shipper.DroppedDNS(), shipper.Dropped())
	}
}

func readDNS(ctx context.Context, cc *grpc.ClientConn, req *fedmeshv1.GetDNSRequest) ([]*fedmeshv1.DNSRecord, error) {
	s, err := fedmeshv1.NewFlowServiceClient(cc).GetDNS(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*fedmeshv1.DNSRecord
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m.GetRecords()...)
	}
}

func getAllFlows(ctx context.Context, cc *grpc.ClientConn) ([]*fedmeshv1.Flow, error) {
	s, err := fedmeshv1.NewFlowServiceClient(cc).GetFlows(ctx, &fedmeshv1.GetFlowsRequest{})
	if err != nil {
		return nil, err
	}
	var out []*fedmeshv1.Flow
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m.GetFlows()...)
	}
}
