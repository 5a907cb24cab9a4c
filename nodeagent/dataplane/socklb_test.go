package dataplane

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"testing"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func be(addrPort string, w uint32) ServiceBackend {
	a := ap(addrPort)
	return ServiceBackend{Addr: a.Addr(), Port: a.Port(), Weight: w, Cluster: "c", Node: "n"}
}

func fe(vipPort string, proto uint8, bs ...ServiceBackend) ServiceFrontend {
	a := ap(vipPort)
	return ServiceFrontend{Key: ServiceKey{VIP: a.Addr(), Port: a.Port(), Protocol: proto}, Namespace: "demo", Name: "svc",
		Backends: bs}
}

func table(rev uint64, fs ...ServiceFrontend) *ServiceTable {
	SortFrontends(fs)
	return &ServiceTable{Revision: rev, Frontends: fs}
}

func TestChooseBackendHonoursWeightsExactly(t *testing.T) {
	// Every r in [0, total) picks a backend; each must be picked exactly
	// its weight's times, so a uniform r makes the choice weighted.
	for _, weights := range [][]uint32{{1}, {1, 1}, {1, 3}, {5, 1, 2}, {2, 2, 2, 7, 1}, {100, 1, 1, 1, 1, 1, 1, 50}} {
		bs := make([]lbBackend, len(weights))
		var cum uint32
		for i, w := range weights {
			cum += w
			bs[i].Cum = cum
		}
		got := make([]uint32, len(weights))
		for r := range cum {
			got[chooseBackend(bs, r)]++
		}
		for i := range weights {
			if got[i] != weights[i] {
				t.Errorf("weights %v: backend %d chosen %d times over every r, want %d", weights, i, got[i], weights[i])
			}
		}
	}
}

func TestRenderServicesServesWhatFitsAndReports(t *testing.T) {
	many := func(n int) []ServiceBackend {
		var bs []ServiceBackend
		for i := range n {
			bs = append(bs, be(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 80).String(), 1))
		}
		return bs
	}
	tests := []struct {
		name       string
		lim        ServiceLimits
		table      *ServiceTable
		wantLoaded map[string]int // "vip:port/proto" -> backends loaded
		wantTrunc  map[string]string
	}{
		{
			name:       "everything fits",
			lim:        ServiceLimits{Frontends: 4, Backends: 16, BackendsPerFrontend: 8},
			table:      table(1, fe("10.96.0.1:80", protoTCP, many(3)...), fe("10.96.0.1:53", protoUDP, many(2)...)),
			wantLoaded: map[string]int{"10.96.0.1:80/6": 3, "10.96.0.1:53/17": 2},
		},
		{
			name:       "per-frontend cap keeps the first backends",
			lim:        ServiceLimits{Frontends: 4, Backends: 64, BackendsPerFrontend: 4},
			table:      table(1, fe("10.96.0.1:80", protoTCP, many(10)...)),
			wantLoaded: map[string]int{"10.96.0.1:80/6": 4},
			wantTrunc:  map[string]string{"10.96.0.1:80/6": TruncPerFrontend},
		},
		{
			name: "short backend map shares fairly: small frontends whole, large ones split the rest",
			lim:  ServiceLimits{Frontends: 4, Backends: 20, BackendsPerFrontend: 100}, // budget 10
			table: table(1, fe("10.96.0.1:80", protoTCP, many(2)...), fe("10.96.0.2:80", protoTCP, many(9)...),
				fe("10.96.0.3:80", protoTCP, many(9)...)),
			wantLoaded: map[string]int{"10.96.0.1:80/6": 2, "10.96.0.2:80/6": 4, "10.96.0.3:80/6": 4},
			wantTrunc:  map[string]string{"10.96.0.2:80/6": TruncBackendMap, "10.96.0.3:80/6": TruncBackendMap},
		},
		{
			name:       "frontend map full leaves the last frontends out",
			lim:        ServiceLimits{Frontends: 1, Backends: 20, BackendsPerFrontend: 10},
			table:      table(1, fe("10.96.0.1:80", protoTCP, many(1)...), fe("10.96.0.2:80", protoTCP, many(1)...)),
			wantLoaded: map[string]int{"10.96.0.1:80/6": 1},
			wantTrunc:  map[string]string{"10.96.0.2:80/6": TruncFrontendMap},
		},
		{
			name: "invalid backends are left out: other family, port 0, weight 0",
			lim:  ServiceLimits{},
			table: table(1, fe("10.96.0.1:80", protoTCP, be("10.1.0.1:80", 1), be("[fd00::1]:80", 1),
				be("10.1.0.2:0", 1), be("10.1.0.3:80", 0))),
			wantLoaded: map[string]int{"10.96.0.1:80/6": 1},
			wantTrunc:  map[string]string{"10.96.0.1:80/6": TruncInvalid},
		},
		{
			name:      "invalid frontend is not translated",
			lim:       ServiceLimits{},
			table:     table(1, fe("10.96.0.1:80", 1, be("10.1.0.1:80", 1)), fe("[::ffff:10.96.0.1]:80", protoTCP, be("10.1.0.1:80", 1))),
			wantTrunc: map[string]string{"10.96.0.1:80/1": TruncInvalidKey, "[::ffff:10.96.0.1]:80/6": TruncInvalidKey},
		},
		{
			name:       "weights past 2^32-1 stop the list",
			lim:        ServiceLimits{},
			table:      table(1, fe("10.96.0.1:80", protoTCP, be("10.1.0.1:80", 1<<31), be("10.1.0.2:80", 1<<31), be("10.1.0.3:80", 1))),
			wantLoaded: map[string]int{"10.96.0.1:80/6": 1},
			wantTrunc:  map[string]string{"10.96.0.1:80/6": TruncWeightTotals},
		},
		{
			name:       "a frontend without backends is loaded empty (rejects), not reported",
			lim:        ServiceLimits{},
			table:      table(1, fe("10.96.0.1:80", protoTCP)),
			wantLoaded: map[string]int{"10.96.0.1:80/6": 0},
		},
	}
	keyName := func(k ServiceKey) string {
		return netip.AddrPortFrom(k.VIP, k.Port).String() + "/" + strconv.Itoa(int(k.Protocol))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, trunc := renderServices(tt.table, tt.lim)
			loaded := map[string]int{}
			for k, f := range got.Frontends {
				loaded[keyName(k)] = len(f.Backends)
			}
			if !mapsEqual(loaded, tt.wantLoaded) {
				t.Errorf("loaded %v, want %v", loaded, tt.wantLoaded)
			}
			reasons := map[string]string{}
			for _, tr := range trunc {
				reasons[keyName(tr.Key)] = tr.Reason
				if tr.Loaded != loaded[keyName(tr.Key)] {
					t.Errorf("%s reported %d loaded, loaded %d", keyName(tr.Key), tr.Loaded, loaded[keyName(tr.Key)])
				}
			}
			if !mapsEqual(reasons, tt.wantTrunc) {
				t.Errorf("truncations %v, want %v", reasons, tt.wantTrunc)
			}
			if lim := tt.lim.withDefaults(); len(got.Frontends) > lim.Frontends {
				t.Errorf("%d frontends loaded, limit %d", len(got.Frontends), lim.Frontends)
			}
			total := 0
			for _, f := range got.Frontends {
				total += len(f.Backends)
			}
			if lim := tt.lim.withDefaults(); total > lim.Backends/2 {
				t.Errorf("%d backends loaded, budget %d", total, lim.Backends/2)
			}
		})
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// seq returns a rand source cycling through rs.
func seq(rs ...uint32) func() uint32 {
	i := 0
	return func() uint32 { r := rs[i%len(rs)]; i++; return r }
}

func TestSockLBMemoryTranslatesAndReverses(t *testing.T) {
	ctx := context.Background()
	m := NewSockLBMemory(ServiceLimits{}, seq(0, 1, 2, 3))
	if err := m.ApplyServices(ctx, table(1,
		fe("10.96.0.1:80", protoTCP, be("10.1.0.1:8080", 1), be("10.1.0.2:8080", 3)),
		fe("[fd96::1]:53", protoUDP, be("[fd01::1]:5353", 1)),
		fe("10.96.0.9:80", protoTCP))); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		call   func() (netip.AddrPort, error)
		want   netip.AddrPort
		reject bool
	}{
		{"tcp v4 r=0 picks the weight-1 backend", func() (netip.AddrPort, error) { return m.Connect(1, protoTCP, ap("10.96.0.1:80")) }, ap("10.1.0.1:8080"), false},
		{"tcp v4 r=1 picks the weight-3 backend", func() (netip.AddrPort, error) { return m.Connect(2, protoTCP, ap("10.96.0.1:80")) }, ap("10.1.0.2:8080"), false},
		{"udp v6 sendmsg", func() (netip.AddrPort, error) { return m.SendMsg(3, protoUDP, ap("[fd96::1]:53")) }, ap("[fd01::1]:5353"), false},
		{"dual-stack socket to a v4-mapped VIP gets a v4-mapped backend", func() (netip.AddrPort, error) {
			return m.Connect(4, protoTCP, ap("[::ffff:10.96.0.1]:80"))
		}, ap("[::ffff:10.1.0.2]:8080"), false},
		{"other port is not translated", func() (netip.AddrPort, error) { return m.Connect(5, protoTCP, ap("10.96.0.1:81")) }, ap("10.96.0.1:81"), false},
		{"other protocol is not translated", func() (netip.AddrPort, error) { return m.Connect(5, protoUDP, ap("10.96.0.1:80")) }, ap("10.96.0.1:80"), false},
		{"frontend without backends rejects", func() (netip.AddrPort, error) { return m.Connect(6, protoTCP, ap("10.96.0.9:80")) }, ap("10.96.0.9:80"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.call()
			if tt.reject != errors.Is(err, ErrServiceRejected) {
				t.Fatalf("err %v, reject %v", err, tt.reject)
			}
			if got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
	if got := m.RecvMsg(3, protoUDP, ap("[fd01::1]:5353")); got != ap("[fd96::1]:53") {
		t.Errorf("recvmsg on the translated socket shows %s, want the VIP", got)
	}
	if got := m.RecvMsg(99, protoUDP, ap("[fd01::1]:5353")); got != ap("[fd01::1]:5353") {
		t.Errorf("recvmsg on another socket shows %s, want the backend unchanged", got)
	}
	if got := m.PeerName(4, protoTCP, ap("[::ffff:10.1.0.2]:8080")); got != ap("[::ffff:10.96.0.1]:80") {
		t.Errorf("getpeername on the dual-stack socket shows %s, want the v4-mapped VIP", got)
	}
	st, _ := m.ServiceStatus(ctx)
	if st.Translated != 4 || st.Rejected != 1 || st.Reversed != 2 || st.Frontends != 3 || st.Backends != 3 || st.Err() != nil {
		t.Errorf("status %+v", st)
	}
}

func TestSockLBMemoryUDPSocketKeepsBackendUntilSetChanges(t *testing.T) {
	ctx := context.Background()
	m := NewSockLBMemory(ServiceLimits{}, seq(1, 0, 0, 0, 0))
	vip := ap("10.96.0.1:53")
	two := table(1, fe(vip.String(), protoUDP, be("10.1.0.1:53", 1), be("10.1.0.2:53", 1)))
	if err := m.ApplyServices(ctx, two); err != nil {
		t.Fatal(err)
	}
	first, _ := m.SendMsg(7, protoUDP, vip)
	if first != ap("10.1.0.2:53") {
		t.Fatalf("first choice %s", first)
	}
	// The rand source now says backend 0, but the socket keeps its choice.
	for range 3 {
		if got, _ := m.SendMsg(7, protoUDP, vip); got != first {
			t.Fatalf("socket moved to %s while the set was unchanged", got)
		}
	}
	// Re-applying an equal table keeps the set (and the socket's choice).
	if err := m.ApplyServices(ctx, table(2, fe(vip.String(), protoUDP, be("10.1.0.1:53", 1), be("10.1.0.2:53", 1)))); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.SendMsg(7, protoUDP, vip); got != first {
		t.Fatalf("socket moved to %s after an unchanged update", got)
	}
	// Withdrawing the chosen backend moves the socket at its next datagram.
	if err := m.ApplyServices(ctx, table(3, fe(vip.String(), protoUDP, be("10.1.0.1:53", 1)))); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.SendMsg(7, protoUDP, vip); got != ap("10.1.0.1:53") {
		t.Fatalf("socket still sends to %s after its backend was withdrawn", got)
	}
}

// FuzzRenderServices holds renderServices and the choice to their
// invariants for any table: within the limits, cumulative weights strictly
// rising, truncations reported exactly, every r choosing the backend whose
// weight interval holds it, and every loaded backend one the table lists.
func FuzzRenderServices(f *testing.F) {
	f.Add([]byte{4, 1, 0, 80, 6, 2, 1, 10, 3, 2, 5}, uint16(16), uint8(4))
	f.Add([]byte{6, 9, 0, 53, 17, 3, 0, 0, 255, 255, 255, 255, 7, 7}, uint16(4), uint8(1))
	f.Add([]byte{4, 1, 0, 0, 1, 1, 1}, uint16(0), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, backendsMap uint16, perFrontend uint8) {
		next := func() byte {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return b
		}
		addr := func(v4 bool, b byte) netip.Addr {
			if v4 {
				return netip.AddrFrom4([4]byte{10, 0, 0, b})
			}
			return netip.AddrFrom16([16]byte{0: 0xfd, 15: b})
		}
		tbl := &ServiceTable{Revision: 1}
		for len(data) > 0 {
			v4 := next()%2 == 0
			fe := ServiceFrontend{Key: ServiceKey{VIP: addr(v4, next()), Port: uint16(next())<<8 | uint16(next()), Protocol: next()}}
			for n := int(next() % 8); n > 0; n-- {
				w := uint32(next()) << (8 * (next() % 4))
				fe.Backends = append(fe.Backends, ServiceBackend{Addr: addr(next()%4 != 0 == v4, next()), Port: uint16(next()), Weight: w})
			}
			tbl.Frontends = append(tbl.Frontends, fe)
		}
		lim := ServiceLimits{Frontends: 8, Backends: int(backendsMap % 64), BackendsPerFrontend: int(perFrontend % 16)}
		got, trunc := renderServices(tbl, lim)
		lim = lim.withDefaults()
		total := 0
		listed := map[ServiceKey]map[netip.AddrPort]bool{}
		for _, fe := range tbl.Frontends {
			if listed[fe.Key] == nil {
				listed[fe.Key] = map[netip.AddrPort]bool{}
			}
			for _, b := range fe.Backends {
				listed[fe.Key][netip.AddrPortFrom(b.Addr, b.Port)] = true
			}
		}
		for k, f := range got.Frontends {
			if !validServiceKey(k) {
				t.Fatalf("invalid frontend %v loaded", k)
			}
			total += len(f.Backends)
			if len(f.Backends) > lim.BackendsPerFrontend {
				t.Fatalf("%v: %d backends over the per-frontend limit", k, len(f.Backends))
			}
			var prev uint32
			for _, b := range f.Backends {
				if b.Cum <= prev || b.Addr.Is4() != k.VIP.Is4() || b.Port == 0 || !listed[k][netip.AddrPortFrom(b.Addr, b.Port)] {
					t.Fatalf("%v: bad loaded backend %+v after cum %d", k, b, prev)
				}
				prev = b.Cum
			}
			for _, r := range []uint32{0, prev / 2, prev - 1} {
				if len(f.Backends) > 0 {
					if i := chooseBackend(f.Backends, r); i < 0 || i >= len(f.Backends) || f.Backends[i].Cum <= r ||
						(i > 0 && f.Backends[i-1].Cum > r) {
						t.Fatalf("%v: r=%d chose %d", k, r, i)
					}
				}
			}
		}
		if len(got.Frontends) > lim.Frontends || total > lim.Backends/2 {
			t.Fatalf("%d frontends, %d backends loaded over limits %+v", len(got.Frontends), total, lim)
		}
		for _, tr := range trunc {
			f, ok := got.Frontends[tr.Key]
			switch tr.Reason {
			case TruncInvalidKey, TruncFrontendMap:
				ok = !ok && tr.Loaded == 0
			default:
				ok = ok && len(f.Backends) == tr.Loaded && tr.Loaded < tr.Listed
			}
			if !ok {
				t.Fatalf("truncation %+v does not match what was loaded", tr)
			}
		}
	})
}
