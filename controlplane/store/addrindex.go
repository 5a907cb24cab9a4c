package store

import (
	"iter"
	"net/netip"
)

// addrIndex maps each endpoint address to the endpoint owning it. IPv4
// and IPv6 addresses live in maps of fixed-size keys: a netip.Addr key is
// 24 bytes (it carries a zone pointer), which at millions of endpoints made
// this index a sixth of a replica's heap. Keys stay exactly the addresses
// they were (an IPv4-mapped IPv6 address is not its IPv4 address; a zoned
// one, which the edge never accepts but an old log entry might hold, keeps
// its zone), so ownership conflicts are judged as before.
type addrIndex struct {
	v4    map[[4]byte]*epEntry
	v6    map[[16]byte]*epEntry
	zoned map[netip.Addr]*epEntry
}

func newAddrIndex() addrIndex {
	return addrIndex{v4: map[[4]byte]*epEntry{}, v6: map[[16]byte]*epEntry{}, zoned: map[netip.Addr]*epEntry{}}
}

// get returns a's owner, nil for none.
func (x addrIndex) get(a netip.Addr) *epEntry {
	switch {
	case a.Zone() != "":
		return x.zoned[a]
	case a.Is4():
		return x.v4[a.As4()]
	case a.Is6():
		return x.v6[a.As16()]
	}
	return nil
}

// set makes e a's owner. The zero Addr is never owned.
func (x addrIndex) set(a netip.Addr, e *epEntry) {
	switch {
	case a.Zone() != "":
		x.zoned[a] = e
	case a.Is4():
		x.v4[a.As4()] = e
	case a.Is6():
		x.v6[a.As16()] = e
	}
}

func (x addrIndex) delete(a netip.Addr) {
	switch {
	case a.Zone() != "":
		delete(x.zoned, a)
	case a.Is4():
		delete(x.v4, a.As4())
	case a.Is6():
		delete(x.v6, a.As16())
	}
}

// all yields every owned address, in no particular order.
func (x addrIndex) all() iter.Seq2[netip.Addr, *epEntry] {
	return func(yield func(netip.Addr, *epEntry) bool) {
		for k, e := range x.v4 {
			if !yield(netip.AddrFrom4(k), e) {
				return
			}
		}
		for k, e := range x.v6 {
			if !yield(netip.AddrFrom16(k), e) {
				return
			}
		}
		for a, e := range x.zoned {
			if !yield(a, e) {
				return
			}
		}
	}
}
