package dataplane

import (
	"encoding/binary"
	"slices"
)

// lpm is a longest-prefix-match table with the kernel's LPM trie semantics:
// an entry of length L matches a lookup key of length K when L <= K and the
// first L bits agree; the longest such entry wins.
type lpm struct {
	lens    []uint32 // distinct entry lengths, longest first
	entries map[string]uint32
}

func lpmKey(data []byte, bits uint32) string {
	n := (bits + 7) / 8
	b := make([]byte, 4+n)
	binary.LittleEndian.PutUint32(b, bits)
	copy(b[4:], data[:n])
	if rem := bits % 8; rem != 0 {
		b[len(b)-1] &= byte(0xff << (8 - rem))
	}
	return string(b)
}

func newLPM() *lpm { return &lpm{entries: map[string]uint32{}} }

func (l *lpm) insert(data []byte, bits, v uint32) {
	k := lpmKey(data, bits)
	if _, ok := l.entries[k]; !ok && !slices.Contains(l.lens, bits) {
		l.lens = append(l.lens, bits)
		slices.Sort(l.lens)
		slices.Reverse(l.lens)
	}
	l.entries[k] = v
}

func (l *lpm) lookup(data []byte, bits uint32) (uint32, bool) {
	for _, n := range l.lens {
		if n > bits {
			continue
		}
		if v, ok := l.entries[lpmKey(data, n)]; ok {
			return v, true
		}
	}
	return 0, false
}

func (k policyKey) data() []byte {
	b := make([]byte, 14)
	binary.LittleEndian.PutUint32(b[0:], k.Ifindex)
	b[4], b[5], b[6], b[7] = k.Dir, k.Kind, k.Proto, k.Pad
	binary.LittleEndian.PutUint32(b[8:], k.Peer)
	b[12], b[13] = k.Port[0], k.Port[1]
	return b
}

func (k cidrKey) data() []byte {
	b := make([]byte, 24)
	binary.LittleEndian.PutUint32(b[0:], k.Ifindex)
	b[4] = k.Dir
	copy(b[8:], k.IP[:])
	return b
}

// memTables is Tables indexed for lookups (the ipcache answers its own).
type memTables struct {
	t            *Tables
	policy, cidr *lpm
}

func indexTables(t *Tables) *memTables {
	m := &memTables{t: t, policy: newLPM(), cidr: newLPM()}
	for k, v := range t.Policy {
		m.policy.insert(k.data(), k.Prefixlen, v)
	}
	for k, v := range t.CIDR {
		m.cidr.insert(k.data(), k.Prefixlen, v)
	}
	return m
}
