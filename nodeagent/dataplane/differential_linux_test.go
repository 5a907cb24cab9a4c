package dataplane

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/fedmesh/fedmesh/federation/policy"
	"golang.org/x/sys/unix"
)

// gen draws random revisions and packets from small pools so that rules,
// ipcache entries and packets collide often.
type gen struct {
	r    *rand.Rand
	prev []pktSpec
}

func (g *gen) addr(v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:18:%d::%d", g.r.IntN(3), 1+g.r.IntN(6)))
	}
	return netip.MustParseAddr(fmt.Sprintf("198.18.%d.%d", g.r.IntN(3), 1+g.r.IntN(6)))
}

func (g *gen) prefix(v6 bool) netip.Prefix {
	a := g.addr(v6)
	bits := []int{0, 8, 16, 24, 28, 30, 32}
	if v6 {
		bits = []int{0, 32, 48, 64, 120, 126, 128}
	}
	return netip.PrefixFrom(a, bits[g.r.IntN(len(bits))]).Masked()
}

var portPool = []uint16{22, 53, 80, 443, 1000, 1023, 1024, 8080, 8443, 32768, 65535}

func (g *gen) ports() policy.PortRange {
	switch g.r.IntN(3) {
	case 0:
		return policy.AllPorts
	case 1:
		p := portPool[g.r.IntN(len(portPool))]
		return policy.PortRange{First: p, Last: p}
	}
	a, b := portPool[g.r.IntN(len(portPool))], portPool[g.r.IntN(len(portPool))]
	if a > b {
		a, b = b, a
	}
	return policy.PortRange{First: a, Last: b}
}

var protoPool = []uint8{policy.ProtoAny, protoTCP, protoUDP, protoSCTP, protoICMP, protoICMPv6}

func (g *gen) revision(n uint64, ids []string) *Revision {
	rev := &Revision{Number: n, Rules: map[string]policy.EndpointRules{}}
	seen := map[netip.Prefix]bool{}
	ipc := NewIPCacheBuilder(IPCache{})
	// A third of the revisions have host entries only, as the agent
	// writes them: the programs then skip fm_ipcache's trie for the
	// addresses the hosts lack (EPF_IPC_HOSTS_ONLY).
	hostsOnly := g.r.IntN(3) == 0
	for i := range 30 {
		v6 := g.r.IntN(2) == 0
		p := g.prefix(v6)
		if hostsOnly {
			if i >= 10 {
				break // leave some of the packets' addresses unknown
			}
			a := g.addr(v6)
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		ipc.Set(p, uint32(1+g.r.IntN(6)))
	}
	rev.IPCache = ipc.IPCache()
	rule := policy.RuleID(1)
	dirRules := func() policy.DirectionRules {
		if g.r.IntN(10) < 3 {
			return policy.DirectionRules{}
		}
		dr := policy.DirectionRules{Enforced: true}
		for range g.r.IntN(5) {
			peer := uint32(g.r.IntN(7))
			dr.Identities = append(dr.Identities, policy.IdentityRule{Peer: peer,
				Proto: protoPool[g.r.IntN(len(protoPool))], Ports: g.ports(), Rule: rule})
			rule++
		}
		for range g.r.IntN(4) {
			v6 := g.r.IntN(2) == 0
			cr := policy.CIDRRule{Prefix: g.prefix(v6), Proto: protoPool[g.r.IntN(len(protoPool))],
				Ports: g.ports(), Rule: rule}
			for range g.r.IntN(3) {
				cr.Except = append(cr.Except, g.prefix(v6))
			}
			dr.CIDRs = append(dr.CIDRs, cr)
			rule++
		}
		return dr
	}
	for _, id := range ids {
		rev.Rules[id] = policy.EndpointRules{Identity: uint32(1 + g.r.IntN(6)), Ingress: dirRules(), Egress: dirRules()}
	}
	return rev
}

// packet returns a random frame spec; about a quarter reverse an earlier
// packet (replies), some are ICMP errors quoting one, some fragments, some
// control frames.
func (g *gen) packet() pktSpec {
	if len(g.prev) > 0 && g.r.IntN(4) == 0 {
		o := g.prev[g.r.IntN(len(g.prev))]
		o.src, o.dst, o.sport, o.dport = o.dst, o.src, o.dport, o.sport
		if o.proto == protoICMP && o.icmpType == 8 {
			o.icmpType = 0
		} else if o.proto == protoICMPv6 && o.icmpType == 128 {
			o.icmpType = 129
		}
		o.tcpFlags = 0x10
		return o
	}
	v6 := g.r.IntN(2) == 0
	p := pktSpec{src: g.addr(v6), dst: g.addr(v6), sport: portPool[g.r.IntN(len(portPool))],
		dport: portPool[g.r.IntN(len(portPool))], ipID: uint16(g.r.IntN(4))}
	protos := []uint8{protoTCP, protoTCP, protoUDP, protoSCTP, protoICMP, 47}
	p.proto = protos[g.r.IntN(len(protos))]
	if p.proto == protoICMP && v6 {
		p.proto = protoICMPv6
	}
	switch p.proto {
	case protoTCP:
		p.tcpFlags = []uint8{0x02, 0x10, 0x12, 0x11, 0x04}[g.r.IntN(5)]
	case protoICMP, protoICMPv6:
		p.icmpID = uint16(g.r.IntN(3))
		types4 := []uint8{8, 0, 3, 11, 13}
		types6 := []uint8{128, 129, 1, 3, 135, 136, 133}
		if v6 {
			p.icmpType = types6[g.r.IntN(len(types6))]
		} else {
			p.icmpType = types4[g.r.IntN(len(types4))]
		}
		if isErr := (!v6 && (p.icmpType == 3 || p.icmpType == 11)) || (v6 && p.icmpType <= 4); isErr && len(g.prev) > 0 {
			q := g.prev[g.r.IntN(len(g.prev))]
			if q.src.Is6() == v6 && q.fragOff == 0 {
				ip := q.ipPacket()
				hl := 20 + 4*q.ipOptions
				if v6 {
					hl = 40
				}
				if len(ip) > hl+8 {
					ip = ip[:hl+8]
				}
				p.inner = ip
			}
		}
	}
	switch g.r.IntN(20) {
	case 0:
		p.moreFrags = true
	case 1:
		p.fragOff = uint16(1 + g.r.IntN(3))
	case 2:
		if !v6 {
			p.ipOptions = 1 + g.r.IntN(3)
		} else {
			p.v6ExtHdrs = 1 + g.r.IntN(5)
		}
	case 3:
		p.etherType = []uint16{0x0806, 0x8100, 0x88cc}[g.r.IntN(3)]
	}
	p.payload = g.r.IntN(40)
	g.prev = append(g.prev, p)
	if len(g.prev) > 200 {
		g.prev = g.prev[1:]
	}
	return p
}

// mangle breaks a frame now and then: truncation or a bad IHL.
func (g *gen) mangle(f []byte) []byte {
	switch g.r.IntN(25) {
	case 0:
		if len(f) > 15 {
			return f[:14+g.r.IntN(len(f)-14)]
		}
	case 1:
		if f[12] == 0x08 && f[13] == 0x00 {
			f[14] = 4<<4 | byte(g.r.IntN(16))
		}
	case 2:
		f[16], f[17] = byte(g.r.IntN(256)), byte(g.r.IntN(256)) // total/payload length
	}
	return f
}

func TestDifferentialKernelVsMemory(t *testing.T) {
	requireKernel(t)
	ns, nsPath := newNetNS(t)
	ifaces := []string{"d0", "d1", "d2"}
	ids := []string{"c/ns/a", "c/ns/b", "c/ns/c"}
	for _, i := range ifaces {
		run(t, "ip", "-n", ns, "link", "add", i, "type", "veth", "peer", "name", "p"+i)
		run(t, "ip", "-n", ns, "link", "set", i, "up")
	}
	ctx := context.Background()
	kern, _ := newEBPF(t, nsPath)
	mem := NewMemory(WithIfindexResolver(func(iface string) (uint32, error) { return ifindexIn(nsPath, iface) }))
	idx := map[string]uint32{}
	g := &gen{r: rand.New(rand.NewPCG(1, 2))}

	const revisions, perRevision = 6, 1100
	total := 0
	for n := range uint64(revisions) {
		rev := g.revision(n+1, ids)
		for _, dp := range []Dataplane{kern, mem} {
			if err := dp.Apply(ctx, rev); err != nil {
				t.Fatal(err)
			}
			for i, id := range ids {
				if err := dp.Attach(ctx, Endpoint{ID: id, Interface: ifaces[i]}); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i, id := range ids {
			idx[id], _ = ifindexIn(nsPath, ifaces[i])
		}
		if n%2 == 1 && n+1 < revisions { // the last one keeps its counters readable
			// Tables as an older agent wrote them: the program must fall
			// back to every lookup in the trie and still agree.
			if err := kern.stripLookupSummaries(); err != nil {
				t.Fatal(err)
			}
		}
		err := inNetNS(nsPath, func() error {
			for range perRevision {
				p := g.packet()
				f := g.mangle(p.frame())
				e := g.r.IntN(len(ids))
				dir := policy.Direction(g.r.IntN(2))
				got, err := kern.runProg(uint8(dir), idx[ids[e]], f)
				if errors.Is(err, unix.EINVAL) && truncatedL3(f) {
					// BPF_PROG_TEST_RUN refuses frames shorter than their
					// L3 header; a device never delivers them either.
					continue
				}
				if err != nil {
					return fmt.Errorf("run program on packet %d (len %d, ifindex %d) %x: %w", total, len(f), idx[ids[e]], f, err)
				}
				v, reason, _, err := mem.Process(ids[e], dir, f)
				if err != nil {
					return err
				}
				want := int32(retNext)
				if v == Deny {
					want = retDrop
				}
				if got != want {
					return fmt.Errorf("packet %d (%s %s, rev %d): kernel returned %d, memory %s (%s)\nspec %+v\nframe %x",
						total, ids[e], dir, n+1, got, v, reason, p, f)
				}
				total++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if total < 5000 {
		t.Fatalf("compared %d packets, want >= 5000", total)
	}
	// The kernel's per-endpoint counters split by reason must equal the
	// twin's: same reasons, not only same verdicts.
	kc, err := kern.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mc, _ := mem.Counters(ctx)
	for _, id := range ids {
		for k, v := range mc.Endpoints[id] {
			if kc.Endpoints[id][k].Packets != v.Packets {
				t.Errorf("%s %s %s: kernel counted %d packets, memory %d", id, k.Direction, k.Reason,
					kc.Endpoints[id][k].Packets, v.Packets)
			}
		}
	}
	for r, v := range mc.Rules {
		if kc.Rules[r].Packets != v.Packets {
			t.Errorf("rule %d: kernel counted %d packets, memory %d", r, kc.Rules[r].Packets, v.Packets)
		}
	}
	t.Logf("%d packets agree; memory reasons: %v", total, mc.Endpoints)
}

func truncatedL3(f []byte) bool {
	switch {
	case f[12] == 0x86 && f[13] == 0xdd:
		return len(f) < ethHdrLen+40
	case f[12] == 0x08 && f[13] == 0x00:
		return len(f) < ethHdrLen+20
	}
	return false
}

// stripLookupSummaries clears the endpoints' lookup summaries in the active
// slot, as tables written before they existed have them.
func (e *EBPF) stripLookupSummaries() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.shadow[e.active]
	for k, v := range t.Endpoints {
		v.Lookups = [2]uint8{}
		if err := e.inner[e.active][tabEndpoints].Put(k, v); err != nil {
			return fmt.Errorf("strip lookup summaries: %w", err)
		}
		// Nor had they the endpoint array: the programs read the hash.
		if k < epFastEntries {
			if err := e.inner[e.active][tabEndpointsFast].Put(k, endpointFastVal{}); err != nil {
				return fmt.Errorf("strip endpoint array: %w", err)
			}
		}
	}
	e.shadow[e.active] = nil // the slot no longer holds what Render made
	return nil
}
