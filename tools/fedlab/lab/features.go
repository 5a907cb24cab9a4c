package lab

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// The lab drives the fedmesh binaries it is given, which may be older or
// newer than itself: it passes a flag only when the binary lists it in its
// --help, so the lab runs with binaries that lack a feature, and the tests
// ask the same question to say what they cannot test yet.

// Flags are the long flags a binary lists in its --help, each with its
// value type as pflag prints it ("" for a bool).
type Flags map[string]string

// Has reports whether the binary takes --name.
func (f Flags) Has(name string) bool { _, ok := f[name]; return ok }

// flagLine matches a pflag usage line: "  -x, --name type   usage" or
// "      --name   usage" (a bool has no type word).
var flagLine = regexp.MustCompile(`^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)(?: ([a-zA-Z0-9.]+))?\s{2,}`)

// ParseFlags reads the flags of a --help output.
func ParseFlags(help string) Flags {
	out := Flags{}
	for _, line := range strings.Split(help, "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			out[m[1]] = m[2]
		}
	}
	return out
}

// BinaryFlags runs bin --help (or bin ARGS... --help) and parses the flags.
func BinaryFlags(ctx context.Context, bin string, args ...string) (Flags, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append(args, "--help")...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s %s --help: %w: %s", bin, strings.Join(args, " "), err, out)
	}
	return ParseFlags(string(out)), nil
}

// DNSFeatures says which parts of DNS policy a lab's binaries have.
type DNSFeatures struct {
	// Redirect: the agent redirects pods' queries to the cluster DNS
	// addresses to its resolver (--dns-redirect).
	Redirect bool
	// Names: the agent enforces domainNames (it answers names no rule
	// allows REFUSED: --dns-refuse-denied; the hooks that learn addresses
	// come with it).
	Names bool
	// MinTTL: the agent takes a TTL floor (--dns-min-ttl).
	MinTTL bool
	// Records: fedctl dns shows the agents' DNS records.
	Records bool
}

// ProbeDNSFeatures asks the binaries in binDir what they support.
func ProbeDNSFeatures(ctx context.Context, binDir string) (DNSFeatures, error) {
	agent, err := BinaryFlags(ctx, binDir+"/fedmesh-agent")
	if err != nil {
		return DNSFeatures{}, err
	}
	f := DNSFeatures{Redirect: agent.Has("dns-redirect"), Names: agent.Has("dns-refuse-denied"), MinTTL: agent.Has("dns-min-ttl")}
	// fedctl without a dns command prints its root help for "dns --help",
	// which lists no --follow.
	if fedctl, err := BinaryFlags(ctx, binDir+"/fedctl", "dns"); err == nil {
		f.Records = fedctl.Has("follow")
	}
	return f, nil
}

// AgentMinTTL is the TTL floor the lab gives its agents (when they take
// one): below the test zone's 2 s names, so their expiry is the answer's.
const AgentMinTTL = time.Second

// dnsAgentArgs are the agent's DNS flags beyond --dns-listen, each only
// when the agent has it: unbound in the outside namespace as the upstream,
// redirect of the cluster DNS addresses, REFUSED for names no rule allows,
// and a TTL floor below the zone's shortest TTL.
func dnsAgentArgs(agent Flags, c Cluster) []string {
	args := []string{"--dns-upstream", fmt.Sprintf("%s:53", OutsideDNS)}
	if agent.Has("dns-redirect") && len(c.DNS) > 0 {
		addrs := make([]string, len(c.DNS))
		for i, a := range c.DNS {
			addrs[i] = a.String()
		}
		args = append(args, "--dns-redirect="+strings.Join(addrs, ","))
	}
	if t, ok := agent["dns-refuse-denied"]; ok && t == "" {
		args = append(args, "--dns-refuse-denied=true")
	}
	if t, ok := agent["dns-min-ttl"]; ok {
		switch t {
		case "duration":
			args = append(args, "--dns-min-ttl="+AgentMinTTL.String())
		case "int", "uint", "uint32", "int32", "int64", "uint64":
			args = append(args, fmt.Sprintf("--dns-min-ttl=%d", int(AgentMinTTL.Seconds())))
		}
	}
	return args
}
