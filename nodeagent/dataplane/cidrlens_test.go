package dataplane

import "testing"

// TestCIDRLensListLengthsLongestFirstOrSendToTheTrie: the lengths the
// programs probe, per endpoint and direction, longest first (the first hit
// is then the longest match); more than the programs probe, or entries
// the array does not all hold, leave the direction to the trie (N 0).
func TestCIDRLensListLengthsLongestFirstOrSendToTheTrie(t *testing.T) {
	key := func(ifindex uint32, dir uint8, bits uint32) cidrKey {
		return cidrKey{Prefixlen: cidrFixedBits + bits, Ifindex: ifindex, Dir: dir}
	}
	many := map[cidrKey]uint32{}
	for b := range uint32(cidrProbes + 1) {
		many[key(4, 1, 100+b)] = 1
	}
	many[key(4, 0, 120)] = 2
	for _, c := range []struct {
		name     string
		cidr     map[cidrKey]uint32
		complete bool
		want     map[uint32]cidrLensVal
	}{
		{"longest first, per direction", map[cidrKey]uint32{key(3, 0, 112): 1, key(3, 0, 128): 2, key(3, 0, 104): 3,
			key(3, 1, 96): 4, key(5, 1, 0): 5}, true, map[uint32]cidrLensVal{
			3: {N: [2]uint8{3, 1}, Bits: [2][cidrProbes]uint8{{128, 112, 104}, {96}}},
			5: {N: [2]uint8{0, 1}, Bits: [2][cidrProbes]uint8{{}, {0}}}}},
		{"too many lengths: that direction reads the trie", many, true, map[uint32]cidrLensVal{
			4: {N: [2]uint8{1, 0}, Bits: [2][cidrProbes]uint8{{120}}}}},
		{"the array does not hold every entry", map[cidrKey]uint32{key(3, 0, 112): 1}, false, nil},
		{"an ifindex past the array", map[cidrKey]uint32{key(epFastEntries, 0, 112): 1}, true, map[uint32]cidrLensVal{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tab := &Tables{CIDR: c.cidr, cidrComplete: c.complete}
			got := tab.cidrLens()
			if len(got) != len(c.want) {
				t.Fatalf("cidrLens() = %v, want %v", got, c.want)
			}
			for idx, w := range c.want {
				if got[idx] != w {
					t.Errorf("endpoint %d: %+v, want %+v", idx, got[idx], w)
				}
			}
		})
	}
}
