package dns

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startUnbound runs a real Unbound (Debian's unbound) on 127.0.0.1 as the
// cluster DNS: authoritative for fedmesh.test. from local-data, no
// recursion to the internet. It is stopped (by its PID) when the test ends.
func startUnbound(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("unbound")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("unbound not installed: apt-get install unbound (Debian package unbound): %v", err)
		}
		t.Skipf("unbound not installed (apt-get install unbound; fails when CI=true): %v", err)
	}
	pc, ln := listenPair(t)
	addr := pc.LocalAddr().String()
	port := netip.MustParseAddrPort(addr).Port()
	pc.Close()
	ln.Close()
	dir := t.TempDir()
	var conf strings.Builder
	fmt.Fprintf(&conf, `server:
	interface: 127.0.0.1
	port: %d
	do-daemonize: no
	use-syslog: no
	logfile: ""
	chroot: ""
	username: ""
	directory: "%s"
	pidfile: "%s"
	do-ip6: no
	access-control: 127.0.0.0/8 allow
	module-config: "iterator"
	local-zone: "fedmesh.test." static
	local-data: "www.fedmesh.test. 60 IN A 192.0.2.10"
	local-data: "www.fedmesh.test. 60 IN AAAA 2001:db8::10"
`, port, dir, filepath.Join(dir, "unbound.pid"))
	for i := range 40 {
		fmt.Fprintf(&conf, "\tlocal-data: 'big.fedmesh.test. 60 IN TXT \"record %02d %s\"'\n", i, strings.Repeat("x", 20))
	}
	conf.WriteString("remote-control:\n\tcontrol-enable: no\n")
	path := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(path, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-d", "-c", path)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start unbound: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if r, _, err := c.Exchange(question("www.fedmesh.test.", dns.TypeA), addr); err == nil && len(r.Answer) == 1 {
			return addr
		}
		select {
		case err := <-done:
			t.Fatalf("unbound exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("unbound did not answer on %s within 10s:\n%s", addr, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestForwardsToARealUnbound(t *testing.T) {
	up := startUnbound(t)
	r := startResolver(t, Config{Upstream: up}, Deps{View: testServices()})
	tests := []struct {
		network string
		name    string
		qtype   uint16
		edns    bool
		rcode   int
		answer  []string // nil: compare only the count below
		count   int
		tc      bool
	}{
		{"udp", "www.fedmesh.test.", dns.TypeA, false, dns.RcodeSuccess, []string{"A 192.0.2.10"}, 1, false},
		{"tcp", "www.fedmesh.test.", dns.TypeAAAA, false, dns.RcodeSuccess, []string{"AAAA 2001:db8::10"}, 1, false},
		{"udp", "missing.fedmesh.test.", dns.TypeA, true, dns.RcodeNameError, nil, 0, false},
		{"udp", "www.fedmesh.test.", dns.TypeMX, false, dns.RcodeSuccess, nil, 0, false},
		{"udp", "big.fedmesh.test.", dns.TypeTXT, false, dns.RcodeSuccess, nil, -1, true},
		{"tcp", "big.fedmesh.test.", dns.TypeTXT, false, dns.RcodeSuccess, nil, 40, false},
		{"udp", "redis.demo.svc.clusterset.local.", dns.TypeA, true, dns.RcodeSuccess, []string{"A 10.96.0.10"}, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.network+"/"+tt.name+"/"+dns.TypeToString[tt.qtype], func(t *testing.T) {
			q := question(tt.name, tt.qtype)
			if tt.edns {
				q.SetEdns0(1232, false)
			}
			resp := exchange(t, tt.network, r.addr, q)
			if resp.Rcode != tt.rcode || resp.Truncated != tt.tc {
				t.Fatalf("rcode %s TC %v, want %s TC %v", dns.RcodeToString[resp.Rcode], resp.Truncated, dns.RcodeToString[tt.rcode], tt.tc)
			}
			if tt.answer != nil && !slices.Equal(rdata(resp.Answer), tt.answer) {
				t.Errorf("answer %q, want %q", rdata(resp.Answer), tt.answer)
			}
			if tt.count >= 0 && len(resp.Answer) != tt.count {
				t.Errorf("%d answers, want %d", len(resp.Answer), tt.count)
			}
		})
	}
}
