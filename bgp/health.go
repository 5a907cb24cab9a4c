package bgp

import "slices"

// Effective is what the speaker advertises for desired d given the node's
// health (the contract is in the package doc): healthy, d unchanged;
// unhealthy with an UnhealthyCommunity, every prefix carries that community;
// unhealthy without one, no prefix is advertised. Peers stay up either way,
// so recovery needs no session setup. Effective is pure and does not modify d.
func Effective(d Desired, healthy bool) Desired {
	if healthy || !d.Enabled() {
		return d
	}
	if d.UnhealthyCommunity == nil {
		d.Prefixes = nil
		return d
	}
	out := make([]Prefix, len(d.Prefixes))
	for i, p := range d.Prefixes {
		if !slices.Contains(p.Communities, *d.UnhealthyCommunity) {
			p.Communities = append(slices.Clone(p.Communities), *d.UnhealthyCommunity)
		}
		out[i] = p
	}
	d.Prefixes = out
	return d
}
