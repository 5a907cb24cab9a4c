package lab

import (
	"context"
	_ "embed"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DemoDNSCNP is the federated policy of the DNS step: the web pods' egress
// by name (and DNS itself).
//
//go:embed demo-dns-cnp.yaml
var DemoDNSCNP []byte

// DemoDNSDeny denies the rest of the web and api pods' egress, after
// DemoDNSCNP.
//
//go:embed demo-dns-deny.yaml
var DemoDNSDeny []byte

// DemoDNSAPI is a member cluster's own ClusterNetworkPolicy for its api
// pods' egress by name (the tests apply it with kubectl).
//
//go:embed demo-dns-api.yaml
var DemoDNSAPI []byte

// DNSServer is where a lab pod asks its questions: the cluster DNS address
// when the agents redirect it, else the node-local resolver itself.
func DNSServer(f DNSFeatures) string {
	if f.Redirect {
		return netip.AddrPortFrom(ClusterDNS[0], 53).String()
	}
	return NodeDNS + ":53"
}

// dns plays the egress-by-name step: the outside's names, the FQDN policy
// applied with --wait, an allowed name resolved and connected to at once,
// a denied one answered REFUSED with its address closed, and the agents'
// DNS records in fedctl dns. An agent without DNS policy gets the outside
// shown and the rest skipped, said so.
func (d *Demo) dns(ctx context.Context, web Pod) error {
	feat, err := ProbeDNSFeatures(ctx, filepath.Dir(d.Lab.bin("fedmesh-agent")))
	if err != nil {
		return err
	}
	server := DNSServer(feat)
	allowed, _ := LookupOutside("allowed")
	denied, _ := LookupOutside("denied")
	d.say("Egress by DNS name. The lab's outside namespace runs unbound, authoritative for %s; %s asks %s (%s)", OutsideZone, web.Name, server,
		map[bool]string{true: "the cluster DNS address, which the agent's socket hooks redirect to its resolver", false: "the node-local resolver; this agent has no --dns-redirect"}[feat.Redirect])
	if err := d.dig(ctx, web, server, allowed.FQDN(), "NOERROR"); err != nil {
		return err
	}
	if !feat.Names {
		fmt.Fprintln(d.Out, "    (this fedmesh-agent has no DNS policy (--dns-refuse-denied): the FQDN policy part of the step is skipped)")
		return nil
	}
	deny := filepath.Join(d.Lab.Dir, "demo-dns-deny.yaml")
	cnp := filepath.Join(d.Lab.Dir, "demo-dns-cnp.yaml")
	if err := os.WriteFile(deny, DemoDNSDeny, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(cnp, DemoDNSCNP, 0o644); err != nil {
		return err
	}
	d.say("The platform team allows the web pods a list of names (Admin tier, priority 10) and denies the rest of their egress (priority 20), --wait")
	fmt.Fprint(d.Out, indent(string(DemoDNSCNP)))
	fmt.Fprint(d.Out, indent(string(DemoDNSDeny)))
	// The Accepts first: no moment when the Deny alone stops DNS.
	for _, f := range []string{cnp, deny} {
		if _, err := d.fedctl(ctx, "policy", "apply", "-f", f, "--wait"); err != nil {
			return err
		}
	}
	d.say("An allowed name: the agent hands the answer's addresses to the dataplane before the pod sees the answer, so the first connection gets through")
	if err := d.dig(ctx, web, server, allowed.FQDN(), "NOERROR"); err != nil {
		return err
	}
	if err := d.probe(ctx, web.Name, allowed.FQDN(), netip.AddrPortFrom(allowed.A, OutsideTCPPort).String(), true); err != nil {
		return err
	}
	if err := d.httpGet(ctx, web, allowed); err != nil {
		return err
	}
	d.say("A name the policy does not list is answered REFUSED, and its address stays closed")
	if err := d.dig(ctx, web, server, denied.FQDN(), "REFUSED"); err != nil {
		return err
	}
	if err := d.probe(ctx, web.Name, denied.FQDN(), netip.AddrPortFrom(denied.A, OutsideTCPPort).String(), false); err != nil {
		return err
	}
	if feat.Records {
		d.say("fedctl dns: every query the agents answered, with the pod, the answer and the policy verdict")
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		var out string
		err := waitFor(wctx, "the DNS records in the control plane", func() error {
			var err error
			out, err = d.Lab.Fedctl(wctx, "dns", "--pod", web.Name)
			if err == nil && (!strings.Contains(out, allowed.FQDN()) || !strings.Contains(out, denied.FQDN())) {
				err = fmt.Errorf("no record of %s and %s yet", allowed.FQDN(), denied.FQDN())
			}
			return err
		})
		cancel()
		if err != nil {
			return err
		}
		fmt.Fprintf(d.Out, "$ fedctl dns --pod %s\n%s", web.Name, indent(firstLines(out, 20)))
	}
	d.say("Remove both policies (--wait)")
	for _, name := range []string{"cnp/federated/web-egress-by-name", "cnp/federated/deny-other-egress"} {
		if _, err := d.fedctl(ctx, "policy", "delete", name, "--wait"); err != nil {
			return err
		}
	}
	return nil
}

// dig asks one question from a pod and shows the answer; want is the rcode
// it must get.
func (d *Demo) dig(ctx context.Context, from Pod, server, name, want string) error {
	res, err := d.Lab.DigFrom(ctx, from.Name, server, "udp", name, "A", 2*time.Second)
	fmt.Fprintf(d.Out, "$ fedlab exec %s -- fedlab dig --server %s %s\n", from.Name, server, name)
	if err != nil {
		return err
	}
	var answers []string
	for _, a := range res.Answers {
		answers = append(answers, fmt.Sprintf("%s %d %s %s%s", a.Name, a.TTL, a.Type, a.Addr, a.Target))
	}
	fmt.Fprintf(d.Out, "    %s %s\n", res.Rcode, strings.Join(answers, "; "))
	if res.Rcode != want {
		return fmt.Errorf("%s asked for %s: %s, want %s", from.Name, name, res.Rcode, want)
	}
	return nil
}

// httpGet fetches the outside's page for a name from a pod.
func (d *Demo) httpGet(ctx context.Context, from Pod, n OutsideName) error {
	addr := netip.AddrPortFrom(n.A, OutsideHTTPPort).String()
	cmd, err := d.Lab.Topo.PodCommand(ctx, from.Name, d.Lab.bin("fedlab"), "http-get", "--host", n.FQDN(), addr)
	if err != nil {
		return err
	}
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(d.Out, "$ curl http://%s/   (from %s, to %s)\n%s", n.FQDN(), from.Name, addr, indent(string(out)))
	if err != nil {
		return fmt.Errorf("%s: GET http://%s/: %w", from.Name, n.FQDN(), err)
	}
	return nil
}
