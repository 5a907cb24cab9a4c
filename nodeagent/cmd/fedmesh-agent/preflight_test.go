package main

import (
	"strings"
	"testing"
)

func TestPreflightNamesWhatIsMissing(t *testing.T) {
	all := uint64(1<<capBPF | 1<<capPerfmon | 1<<capNetAdmin | 1<<capSysAdmin | 1<<capNetBindService)
	full := hostFacts{capEff: all, bpffs: true, pinPath: "/sys/fs/bpf", tun: true}
	opts := func() *options {
		return &options{dataplane: "ebpf", bpfPinDir: "/sys/fs/bpf/fedmesh", wireguard: true, bgp: true}
	}
	for _, tc := range []struct {
		name string
		opts func(*options)
		host func(*hostFacts)
		want []string // each must be in the error; none: no error
	}{
		{name: "everything there"},
		{name: "no bpffs", host: func(h *hostFacts) { h.bpffs, h.pinPath = false, "/sys/fs" }, want: []string{"--bpf-pin-dir /sys/fs/bpf/fedmesh is not on a bpffs (/sys/fs is not)"}},
		{name: "no tun", host: func(h *hostFacts) { h.tun = false }, want: []string{"/dev/net/tun is missing"}},
		{name: "no tun without WireGuard", opts: func(o *options) { o.wireguard = false }, host: func(h *hostFacts) { h.tun = false }},
		{name: "no BPF capability", host: func(h *hostFacts) { h.capEff &^= 1 << capBPF }, want: []string{"capability BPF is missing, needed by the eBPF dataplane"}},
		{name: "no SYS_ADMIN", host: func(h *hostFacts) { h.capEff &^= 1 << capSysAdmin }, want: []string{"capability SYS_ADMIN is missing"}},
		{name: "no NET_ADMIN names both users", host: func(h *hostFacts) { h.capEff &^= 1 << capNetAdmin }, want: []string{"capability NET_ADMIN is missing, needed by the eBPF dataplane and WireGuard"}},
		{name: "no NET_BIND_SERVICE", host: func(h *hostFacts) { h.capEff &^= 1 << capNetBindService }, want: []string{"NET_BIND_SERVICE is missing, needed by the BGP speaker"}},
		{name: "memory dataplane without BGP and WireGuard needs nothing", opts: func(o *options) { o.dataplane, o.wireguard, o.bgp = "memory", false, false },
			host: func(h *hostFacts) { *h = hostFacts{} }},
		{name: "all missing at once", host: func(h *hostFacts) { *h = hostFacts{pinPath: "/"} },
			want: []string{"not on a bpffs", "/dev/net/tun", "BPF is missing", "PERFMON is missing", "NET_ADMIN is missing", "SYS_ADMIN is missing", "NET_BIND_SERVICE is missing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, h := opts(), full
			if tc.opts != nil {
				tc.opts(o)
			}
			if tc.host != nil {
				tc.host(&h)
			}
			err := preflight(o, h)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("preflight = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("preflight = nil, want an error naming %v", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("preflight error %q lacks %q", err, w)
				}
			}
		})
	}
}

// The test process itself: readHostFacts parses its own status.
func TestReadHostFactsReadsThisProcess(t *testing.T) {
	h, err := readHostFacts("/nonexistent/deep/dir")
	if err != nil {
		t.Fatal(err)
	}
	if h.pinPath != "/" {
		t.Errorf("nearest existing parent of /nonexistent/deep/dir = %s, want /", h.pinPath)
	}
}
