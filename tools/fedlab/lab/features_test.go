package lab

import (
	"slices"
	"testing"
)

// A pflag --help as cobra prints it: a bool has no type word.
const agentHelp = `Usage:
  fedmesh-agent [flags]

Flags:
      --cluster string              cluster name
      --dns-listen string           address of the node-local resolver
      --dns-min-ttl duration        floor of a learned address's TTL (default 5s)
      --dns-redirect string         cluster DNS addresses
      --dns-refuse-denied           answer REFUSED for names no rule allows (default true)
  -h, --help                        help for fedmesh-agent
      --wireguard                   encrypt between sites
`

func TestParseFlagsReadsNamesAndTypes(t *testing.T) {
	f := ParseFlags(agentHelp)
	want := Flags{"cluster": "string", "dns-listen": "string", "dns-min-ttl": "duration", "dns-redirect": "string", "dns-refuse-denied": "", "help": "", "wireguard": ""}
	if len(f) != len(want) {
		t.Fatalf("parsed %v, want %v", f, want)
	}
	for k, v := range want {
		if got, ok := f[k]; !ok || got != v {
			t.Errorf("--%s: got %q (present %v), want %q", k, got, ok, v)
		}
	}
	if f.Has("usage") || f.Has("fedmesh-agent") {
		t.Errorf("took a non-flag word for a flag: %v", f)
	}
}

func TestDNSAgentArgsPassOnlyWhatTheAgentTakes(t *testing.T) {
	topo, err := Plan(Config{Name: "fl", Clusters: 1, Nodes: 1, Pods: 1})
	if err != nil {
		t.Fatal(err)
	}
	c := topo.Clusters[0]
	upstream := []string{"--dns-upstream", "198.19.0.53:53"}
	tests := []struct {
		name string
		help string
		want []string
	}{
		{"an agent without the DNS policy flags gets the upstream only", "      --dns-listen string   x\n", upstream},
		{"an agent with them gets redirect, REFUSED and a floor below the zone's TTLs", agentHelp,
			append(slices.Clone(upstream), "--dns-redirect=10.96.0.10", "--dns-refuse-denied=true", "--dns-min-ttl=1s")},
		{"a floor in whole seconds", "      --dns-min-ttl uint32   x\n", append(slices.Clone(upstream), "--dns-min-ttl=1")},
		{"a non-bool REFUSED flag is left at its default", "      --dns-refuse-denied string   x\n", upstream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dnsAgentArgs(ParseFlags(tt.help), c); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
