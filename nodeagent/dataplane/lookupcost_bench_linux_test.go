package dataplane

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// BenchmarkLookupCosts measures what the per-packet benchmarks are made
// of, on this host, beside the empty program: one program per case runs
// four of the operation (so the harness's own cost, the empty program's,
// is paid once), and ns/op is per packet. Cases:
//   - array, percpu-array: a lookup the verifier inlines (a bounds check);
//   - hash, lru-hash: a kernel hash lookup (a call that hashes, walks the
//     bucket and compares the key), by key size: the conntrack (20 and 44
//     bytes), ipcache (16) and policy index (12) keys;
//   - lpm-trie: a trie lookup in 1,000 prefixes (the ipcache's and the
//     CIDR classes' fallback);
//   - coarse-clock, jiffies: bpf_ktime_get_coarse_ns (a helper call) and
//     bpf_jiffies64 (inlined), the two packet clocks;
//   - bpf-to-bpf-call: a call to an empty BPF function (a global
//     function's call and return, which the policy stages pay).
//
// Per lookup = (case - empty) / 4. On the 2-core AMD EPYC guest of the
// issues' measurements, whose kernel mitigates every return (SRSO "Safe
// RET"), a hash lookup costs ~30 ns, an LPM lookup ~100 ns and the coarse
// clock ~16 ns, while an inlined array lookup costs ~1 ns: why the
// program's per-revision tables are static cuckoo arrays (cuckoo.go) and
// its clock is jiffies (jiffies_linux.go). Earlier measurements on another
// host had a hash lookup at ~12 ns.
func BenchmarkLookupCosts(b *testing.B) {
	requireKernel(b)
	frame := make([]byte, 64)
	frame[12], frame[13], frame[14] = 0x08, 0x00, 0x45
	run := func(b *testing.B, insns asm.Instructions) {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: insns})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		_, per, err := p.Benchmark(frame, b.N, b.ResetTimer)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
	}
	ret := asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}
	times := func(n int, body asm.Instructions) asm.Instructions {
		var in asm.Instructions
		for range n {
			in = append(in, body...)
		}
		return append(in, ret...)
	}
	// lookups4 looks a zeroed key of keySize bytes up in m four times.
	lookups4 := func(m *ebpf.Map, keySize int) asm.Instructions {
		var in asm.Instructions
		for i := 0; i < keySize; i += 4 {
			in = append(in, asm.StoreImm(asm.R10, int16(-64+i), 0, asm.Word))
		}
		return append(in, times(4, asm.Instructions{
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -64),
			asm.FnMapLookupElem.Call(),
		})...)
	}
	b.Run("baseline-empty-program", func(b *testing.B) { run(b, ret) })
	b.Run("coarse-clock-x4", func(b *testing.B) { run(b, times(4, asm.Instructions{asm.FnKtimeGetCoarseNs.Call()})) })
	b.Run("jiffies-x4", func(b *testing.B) { run(b, times(4, asm.Instructions{asm.FnJiffies64.Call()})) })
	b.Run("bpf-to-bpf-call-x4", func(b *testing.B) {
		run(b, append(times(4, asm.Instructions{asm.Call.Label("fm_empty")}),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("fm_empty"), asm.Return()))
	})
	for _, c := range []struct {
		name string
		typ  ebpf.MapType
		key  int
	}{
		{"array", ebpf.Array, 4},
		{"percpu-array", ebpf.PerCPUArray, 4},
		{"hash-12B-key", ebpf.Hash, 12},
		{"hash-16B-key", ebpf.Hash, 16},
		{"lru-hash-20B-key", ebpf.LRUHash, 20},
		{"lru-hash-44B-key", ebpf.LRUHash, 44},
	} {
		b.Run(fmt.Sprintf("%s-x4", c.name), func(b *testing.B) {
			m, err := ebpf.NewMap(&ebpf.MapSpec{Type: c.typ, KeySize: uint32(c.key), ValueSize: 32, MaxEntries: 1 << 16})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			if c.typ != ebpf.Array && c.typ != ebpf.PerCPUArray {
				if err := m.Put(make([]byte, c.key), make([]byte, 32)); err != nil {
					b.Fatal(err)
				}
			}
			run(b, lookups4(m, c.key))
		})
	}
	b.Run("lpm-trie-1000-prefixes-x4", func(b *testing.B) {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 4 + 24, ValueSize: 4, MaxEntries: 1 << 16, Flags: 1 /* BPF_F_NO_PREALLOC */})
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		for i := range 1000 {
			k := make([]byte, 28)
			k[0] = byte(64 + 128 - 8 - i%64) // prefix length
			k[4+16], k[4+17] = byte(i), byte(i>>8)
			if err := m.Put(k, uint32(i)); err != nil {
				b.Fatal(err)
			}
		}
		in := asm.Instructions{}
		for i := 0; i < 28; i += 4 {
			in = append(in, asm.StoreImm(asm.R10, int16(-64+i), 0, asm.Word))
		}
		in = append(in, asm.StoreImm(asm.R10, -64, 192, asm.Word))
		run(b, append(in, times(4, asm.Instructions{
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -64),
			asm.FnMapLookupElem.Call(),
		})...))
	})
}
