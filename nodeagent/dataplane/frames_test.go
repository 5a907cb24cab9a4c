package dataplane

import (
	"encoding/binary"
	"net/netip"
)

// pktSpec describes a test frame. Checksums are left zero: neither the
// programs nor the in-memory twin read them.
type pktSpec struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	tcpFlags     uint8
	icmpType     uint8
	icmpID       uint16
	ipID         uint16
	fragOff      uint16 // in 8-byte units
	moreFrags    bool
	v6FragHdr    bool // add an IPv6 fragment header
	v6ExtHdrs    int  // IPv6 destination-option headers before L4
	ipOptions    int  // IPv4 option words (IHL = 5 + ipOptions)
	inner        []byte
	payload      int
	etherType    uint16 // overrides the L3 type when non-zero
}

func (p pktSpec) l4() []byte {
	var b []byte
	switch p.proto {
	case protoTCP:
		b = make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		b[12] = 5 << 4
		b[13] = p.tcpFlags
	case protoUDP:
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		binary.BigEndian.PutUint16(b[4:], uint16(8+p.payload))
	case protoSCTP:
		b = make([]byte, 12)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
	case protoICMP, protoICMPv6:
		b = make([]byte, 8)
		b[0] = p.icmpType
		binary.BigEndian.PutUint16(b[4:], p.icmpID)
		b = append(b, p.inner...)
	default:
		b = make([]byte, 4)
	}
	return append(b, make([]byte, p.payload)...)
}

// ipPacket is the L3 packet without Ethernet header.
func (p pktSpec) ipPacket() []byte {
	l4 := p.l4()
	if p.fragOff != 0 {
		l4 = make([]byte, 16+p.payload) // a later fragment carries no L4 header
	}
	if p.src.Is4() {
		hl := 20 + 4*p.ipOptions
		h := make([]byte, hl)
		h[0] = 4<<4 | byte(hl/4)
		binary.BigEndian.PutUint16(h[2:], uint16(hl+len(l4)))
		binary.BigEndian.PutUint16(h[4:], p.ipID)
		fo := p.fragOff & 0x1fff
		if p.moreFrags {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8] = 64
		h[9] = p.proto
		for i := 20; i < hl; i++ {
			h[i] = 1 // NOP options
		}
		s, d := p.src.As4(), p.dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		return append(h, l4...)
	}
	var ext []byte
	next := p.proto
	if p.v6FragHdr || p.fragOff != 0 || p.moreFrags {
		f := make([]byte, 8)
		f[0] = next
		fo := p.fragOff << 3
		if p.moreFrags {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[2:], fo)
		binary.BigEndian.PutUint32(f[4:], uint32(p.ipID))
		ext = f
		next = 44
	}
	for i := 0; i < p.v6ExtHdrs; i++ {
		d := make([]byte, 8)
		d[0] = next
		d[2] = 1 // PadN
		d[3] = 4
		ext = append(d, ext...)
		next = 60
	}
	h := make([]byte, 40)
	h[0] = 6 << 4
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
	h[6] = next
	h[7] = 64
	s, d := p.src.As16(), p.dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(h, ext...), l4...)
}

func (p pktSpec) frame() []byte {
	et := p.etherType
	if et == 0 {
		et = 0x0800
		if p.src.Is6() {
			et = 0x86dd
		}
	}
	eth := make([]byte, 14)
	eth[0], eth[6] = 0x02, 0x02
	binary.BigEndian.PutUint16(eth[12:], et)
	if et != 0x0800 && et != 0x86dd {
		return append(eth, make([]byte, 28)...)
	}
	return append(eth, p.ipPacket()...)
}
