package services

// ClusterSetIP allocation. The control plane's FSM gives every ClusterSetIP
// import one VIP per configured clusterset CIDR (one CIDR per IP family),
// so the same VIP is valid in every member cluster and a node translates it
// whichever cluster it is in (no per-cluster derived Service VIP that only
// that cluster's kube-proxy knows). The address is a hash of the service's
// namespace/name inside the CIDR, probing upward past addresses in use: a
// service that is deleted and created again usually gets its old VIP back,
// and the result depends only on the CIDR, the key and what is in use, so
// every replica allocating in log order gets the same answer.

import (
	"crypto/sha256"
	"encoding/binary"
	"math/big"
	"net/netip"
)

// AllocateVIP returns a free address of cidr for key; ok is false when
// every usable address is in use. IPv4 CIDRs skip their network and
// broadcast addresses; the search visits at most the CIDR's size (capped at
// 2^20 probes), so a full large CIDR fails instead of spinning.
func AllocateVIP(cidr netip.Prefix, key Key, inUse func(netip.Addr) bool) (netip.Addr, bool) {
	cidr = cidr.Masked()
	hostBits := cidr.Addr().BitLen() - cidr.Bits()
	size := new(big.Int).Lsh(big.NewInt(1), uint(hostBits))
	sum := sha256.Sum256([]byte(key.Namespace + "/" + key.Name))
	start := new(big.Int).Mod(new(big.Int).SetBytes(sum[:]), size)
	probes := uint64(1 << 20)
	if hostBits < 20 {
		probes = size.Uint64()
	}
	base := new(big.Int).SetBytes(cidr.Addr().AsSlice())
	for i := uint64(0); i < probes; i++ {
		off := new(big.Int).Add(start, new(big.Int).SetUint64(i))
		off.Mod(off, size)
		if cidr.Addr().Is4() && hostBits >= 2 && (off.Sign() == 0 || off.Cmp(new(big.Int).Sub(size, big.NewInt(1))) == 0) {
			continue
		}
		a := addrFromInt(new(big.Int).Add(base, off), cidr.Addr().Is4())
		if !inUse(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func addrFromInt(n *big.Int, v4 bool) netip.Addr {
	if v4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(n.Uint64()))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	n.FillBytes(b[:])
	return netip.AddrFrom16(b)
}
