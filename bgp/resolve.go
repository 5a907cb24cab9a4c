package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/fedmesh/fedmesh/bgp/peering"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// NodeBGP is what a node's agent knows that decides its speaker: its
// cluster (labels, BGPSettings), its own Node (labels), its router ID and
// pod CIDRs, and the BGP peers and filters the control plane showed it.
type NodeBGP struct {
	Cluster  *fedmeshv1.Cluster
	Node     *fedmeshv1.Node
	RouterID netip.Addr
	PodCIDRs []string
	Peers    []*fedmeshv1.BGPPeerConfig
	Filters  []*fedmeshv1.BGPFilter
	// Services are the node's cluster's service advertisements (what its
	// syncer saw of Services and their ready backends' nodes).
	Services []*fedmeshv1.ServiceAdvertisement
}

// Resolved is a node's desired speaker state before the node's own I/O:
// a peer whose password is a file reference has an empty Password, and
// PasswordFiles says where to read it.
type Resolved struct {
	Desired Desired
	// PasswordFiles maps a peer's address to the file on the node that
	// holds its TCP-MD5 password.
	PasswordFiles map[netip.Addr]string
	// PasswordSecrets maps a peer's address to the peer object whose
	// password is a Secret reference: the control plane hands the node
	// that password by the peer's name (SetSecretPasswords).
	PasswordSecrets map[netip.Addr]string
	// Problems say what could not be resolved, one sentence each, sorted;
	// the sessions concerned are left out (never configured half-way, e.g.
	// without the filters they name).
	Problems []string
}

// Resolve computes a node's desired speaker state from its cluster's
// BGPSettings and the BGP peers (BGPPeerConfig) that select the node.
//
//   - The cluster's settings give what they always gave (FromCluster): a
//     node no peer object selects gets exactly today's state, so an
//     upgrade resets no session.
//   - A peer object that selects the node (peering.Selects) adds a
//     session; where it has the address of a cluster-level peer it
//     replaces it, and of two objects with one address the first by name
//     wins (the other is a problem).
//   - The speaker's ASN is the cluster's local ASN when set, else the
//     session local ASN of the first selected peer by name. A session's
//     local ASN is the node's value of the peer's localAsnLabel, else the
//     peer's localAsn, else the speaker's.
//   - A peer's filters (in order) become its export and import rules, its
//     attributes and advertisements its per-peer policy.
//   - The service addresses the peers advertise (their SERVICE class) are
//     resolved for this node from in.Services (resolveServices).
//
// Invalid cluster settings are an error (as FromCluster's); everything
// about peer objects is a problem that leaves the session out. Pure.
func Resolve(in NodeBGP) (Resolved, error) {
	out := Resolved{}
	bad := func(format string, args ...any) { out.Problems = append(out.Problems, fmt.Sprintf(format, args...)) }
	settings := in.Cluster.GetBgp()
	d, err := FromCluster(settings, in.RouterID, in.PodCIDRs)
	if err != nil {
		return Resolved{}, err
	}

	filters := map[string]peering.Filter{}
	for _, f := range in.Filters {
		pf, errs := peering.ParseFilter(nil, f)
		if len(errs) > 0 {
			bad("filter %s: %v", f.GetName(), errs.ToAggregate())
			continue
		}
		filters[f.GetName()] = pf
	}
	peers := slices.Clone(in.Peers)
	slices.SortFunc(peers, func(a, b *fedmeshv1.BGPPeerConfig) int { return strings.Compare(a.GetName(), b.GetName()) })
	type selected struct {
		peering.Peer
		local uint32 // the session's local ASN (0 = the speaker's)
	}
	var sel []selected
	for _, pb := range peers {
		if !peering.Selects(pb, in.Cluster.GetLabels(), in.Node.GetLabels()) {
			continue
		}
		p, errs := peering.ParsePeer(nil, pb)
		if len(errs) > 0 {
			bad("peer %s: %v", pb.GetName(), errs.ToAggregate())
			continue
		}
		local := p.LocalASN
		if p.LocalASNLabel != "" {
			if v, ok := in.Node.GetLabels()[p.LocalASNLabel]; ok {
				n, err := strconv.ParseUint(v, 10, 32)
				if err != nil || peering.ASNProblem(uint32(n)) != "" {
					bad("peer %s: node label %s=%q is not an ASN (1..4294967294, not 23456); session left out", p.Name, p.LocalASNLabel, v)
					continue
				}
				local = uint32(n)
			}
		}
		sel = append(sel, selected{Peer: p, local: local})
	}
	if len(sel) == 0 {
		return finish(out, d)
	}

	global := settings.GetLocalAsn()
	if global == 0 {
		for _, s := range sel {
			if s.local != 0 {
				global = s.local
				break
			}
		}
	}
	if global == 0 {
		names := make([]string, len(sel))
		for i, s := range sel {
			names[i] = s.Name
		}
		bad("peers %s: no local ASN for this node: set the cluster's bgp.localAsn, or the peers' localAsn or localAsnLabel", strings.Join(names, ", "))
		return finish(out, d)
	}
	if !d.Enabled() {
		// The cluster's speakers are off but peer objects select this node:
		// the cluster's settings still give graceful restart and the
		// unhealthy community.
		on := proto.CloneOf(settings)
		if on == nil {
			on = &fedmeshv1.BGPSettings{}
		}
		on.Enabled, on.LocalAsn, on.Peers = true, global, nil
		if d, err = FromCluster(on, in.RouterID, in.PodCIDRs); err != nil {
			return Resolved{}, err
		}
	}

	byAddr := map[netip.Addr]string{} // address -> peer object that took it
	for _, s := range sel {
		if other, taken := byAddr[s.Address]; taken {
			bad("peer %s: address %s is already peer %s's on this node; session left out", s.Name, s.Address, other)
			continue
		}
		pol := PeerPolicy{Address: s.Address, Attributes: s.Attributes, Advertise: s.Advertisements}
		missing := false
		for _, name := range s.Filters {
			f, ok := filters[name]
			if !ok {
				bad("peer %s: filter %s is not known to the node yet; session left out", s.Name, name)
				missing = true
				break
			}
			pol.Export = append(pol.Export, f.Export()...)
			pol.Import = append(pol.Import, f.Import()...)
		}
		if missing {
			continue
		}
		local := s.local
		if local == global {
			local = 0
		}
		effLocal := cmpOr(local, global)
		switch {
		case s.RouteReflectorClient && s.ASN != effLocal:
			bad("peer %s: a route-reflector client must be iBGP, but its ASN %d is not the session's local ASN %d; session left out", s.Name, s.ASN, effLocal)
			continue
		case s.MultihopTTL > 0 && s.ASN == effLocal:
			bad("peer %s: eBGP multihop on an iBGP session (ASN %d); session left out", s.Name, s.ASN)
			continue
		}
		byAddr[s.Address] = s.Name
		peer := Peer{
			Address: s.Address, ASN: s.ASN, Port: s.Port, HoldTime: s.HoldTime, Keepalive: s.Keepalive,
			Name: s.Name, LocalASN: local, MultihopTTL: s.MultihopTTL, RouteReflectorClient: s.RouteReflectorClient,
		}
		if s.HasRestartTime {
			peer.GracefulRestart = &GracefulRestart{RestartTime: s.RestartTime}
		}
		d.Peers = slices.DeleteFunc(d.Peers, func(p Peer) bool { return p.Address == s.Address && p.Name == "" })
		d.Peers = append(d.Peers, peer)
		if s.PasswordFile != "" {
			if out.PasswordFiles == nil {
				out.PasswordFiles = map[netip.Addr]string{}
			}
			out.PasswordFiles[s.Address] = s.PasswordFile
		}
		if s.PasswordSecret != nil {
			if out.PasswordSecrets == nil {
				out.PasswordSecrets = map[netip.Addr]string{}
			}
			out.PasswordSecrets[s.Address] = s.Name
		}
		if !pol.empty() {
			d.Policy.Peers = append(d.Policy.Peers, pol)
		}
	}
	out.Problems = append(out.Problems, resolveServices(&d, in.Cluster, in.Node.GetName(), in.Services)...)
	return finish(out, d)
}

func finish(out Resolved, d Desired) (Resolved, error) {
	if err := d.Validate(); err != nil {
		return Resolved{}, fmt.Errorf("resolve bgp peers: %w", err)
	}
	slices.Sort(out.Problems)
	out.Desired = d
	return out, nil
}

func cmpOr(a, b uint32) uint32 {
	if a != 0 {
		return a
	}
	return b
}

// SetPasswords fills in the passwords of d's peers from read (the node's
// file reader) for the peers that reference files, keeping a peer's
// previous password (from prev) when its file cannot be read now, so a
// file briefly missing during an update does not reset the session. A peer
// with no password yet and an unreadable file is left out. It returns the
// problems met.
func SetPasswords(d *Desired, files map[netip.Addr]string, prev *Desired, read func(path string) (string, error)) []string {
	return setPasswords(d, files, prev, "password file", read)
}

// SetSecretPasswords is SetPasswords for the peers whose password is a
// Secret reference (Resolved.PasswordSecrets: address to peer name):
// lookup returns the password the control plane handed the node for a
// peer, or why it has none. The last good password is kept likewise.
func SetSecretPasswords(d *Desired, secrets map[netip.Addr]string, prev *Desired, lookup func(peer string) (string, error)) []string {
	return setPasswords(d, secrets, prev, "password Secret of", lookup)
}

func setPasswords(d *Desired, files map[netip.Addr]string, prev *Desired, what string, read func(string) (string, error)) []string {
	var problems []string
	old := map[netip.Addr]string{}
	if prev != nil {
		for _, p := range prev.Peers {
			old[p.Address] = p.Password
		}
	}
	kept := d.Peers[:0]
	for _, p := range d.Peers {
		path, ok := files[p.Address]
		if !ok {
			kept = append(kept, p)
			continue
		}
		pw, err := read(path)
		pw = strings.TrimRight(pw, "\r\n")
		switch {
		case err == nil && len(pw) > maxMD5KeyLen:
			err = fmt.Errorf("%d bytes, TCP-MD5 keys are at most %d", len(pw), maxMD5KeyLen)
			fallthrough
		case err != nil:
			name := p.Name
			if prevPW, had := old[p.Address]; had && prevPW != "" {
				problems = append(problems, fmt.Sprintf("peer %s: %s %s: %v; keeping the password read before", name, what, path, err))
				p.Password = prevPW
				kept = append(kept, p)
				continue
			}
			problems = append(problems, fmt.Sprintf("peer %s: %s %s: %v; session left out", name, what, path, err))
			d.Policy.Peers = slices.DeleteFunc(d.Policy.Peers, func(pp PeerPolicy) bool { return pp.Address == p.Address })
			continue
		}
		p.Password = pw
		kept = append(kept, p)
	}
	d.Peers = kept
	return problems
}
