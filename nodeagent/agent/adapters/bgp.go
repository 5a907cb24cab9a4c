package adapters

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/fedmesh/fedmesh/bgp"
	"github.com/fedmesh/fedmesh/nodeagent/agent"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// BGP is the agent's BGP port over a running bgp.Speaker: it resolves the
// node's peers (bgp.Resolve: the cluster's settings and the peer objects
// that select the node), reads the password files they reference, and
// reconciles the speaker.
type BGP struct {
	Speaker *bgp.Speaker
	Log     *slog.Logger
	// ReadPassword reads a password file (default: the file, at most 4 KiB).
	ReadPassword func(path string) (string, error)

	// applyMu serializes resolving and applying: Apply (the sync
	// goroutine), SetServices and SetPasswords (their follow goroutines).
	applyMu   sync.Mutex
	last      *bgp.Desired     // what the last successful apply applied
	cfg       *agent.BGPConfig // the last config Apply was given
	services  []*fedmeshv1.ServiceAdvertisement
	passwords map[string]*fedmeshv1.BGPPeerPassword // by peer name

	mu       sync.Mutex
	problems []string
}

var _ agent.BGP = (*BGP)(nil)

// maxPasswordFile bounds what is read of a password file: a key is at
// most 80 bytes, so anything much longer is the wrong file.
const maxPasswordFile = 4096

func readPasswordFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPasswordFile))
	return string(b), err
}

// Apply resolves the node's desired speaker state and reconciles the
// speaker. What it cannot resolve of the peer objects is logged and
// reported (Problems); the other sessions go ahead.
func (b *BGP) Apply(ctx context.Context, cfg agent.BGPConfig) error {
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	b.cfg = &cfg
	return b.apply(ctx)
}

// SetServices replaces the cluster's service advertisements (the control
// plane's WatchServiceAdvertisements) and re-applies the last config.
func (b *BGP) SetServices(ctx context.Context, s []*fedmeshv1.ServiceAdvertisement) error {
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	b.services = s
	if b.cfg == nil {
		return nil // the first Apply uses them
	}
	return b.apply(ctx)
}

// SetPasswords replaces the node's Secret-referenced peer passwords (the
// control plane's WatchBGPPasswords) and re-applies the last config. A
// peer whose password is missing or carries an error keeps the password
// it had (bgp.SetSecretPasswords).
func (b *BGP) SetPasswords(ctx context.Context, pws []*fedmeshv1.BGPPeerPassword) error {
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	b.passwords = make(map[string]*fedmeshv1.BGPPeerPassword, len(pws))
	for _, p := range pws {
		b.passwords[p.GetPeer()] = p
	}
	if b.cfg == nil {
		return nil
	}
	return b.apply(ctx)
}

func (b *BGP) secretPassword(peer string) (string, error) {
	p := b.passwords[peer]
	switch {
	case p == nil:
		return "", errors.New("not received from the control plane yet (the cluster's syncer reads the Secret)")
	case p.GetError() != "":
		return "", errors.New(p.GetError())
	}
	return string(p.GetPassword()), nil
}

func (b *BGP) apply(ctx context.Context) error {
	cfg := *b.cfg
	routerID := cfg.RouterID
	if !routerID.Is4() {
		routerID = netip.IPv4Unspecified()
	}
	cluster := cfg.Cluster
	if cluster == nil && cfg.Settings != nil {
		cluster = &fedmeshv1.Cluster{Bgp: cfg.Settings}
	}
	r, err := bgp.Resolve(bgp.NodeBGP{Cluster: cluster, Node: cfg.Node, RouterID: routerID, PodCIDRs: cfg.PodCIDRs, Peers: cfg.Peers, Filters: cfg.Filters, Services: b.services})
	if err != nil {
		return fmt.Errorf("resolve the node's BGP peers: %w", err)
	}
	read := b.ReadPassword
	if read == nil {
		read = readPasswordFile
	}
	d := r.Desired
	problems := append(r.Problems, bgp.SetPasswords(&d, r.PasswordFiles, b.last, read)...)
	problems = append(problems, bgp.SetSecretPasswords(&d, r.PasswordSecrets, b.last, b.secretPassword)...)
	slices.Sort(problems)
	b.setProblems(problems)
	if _, err := b.Speaker.Apply(ctx, d); err != nil {
		return fmt.Errorf("apply BGP config: %w", err)
	}
	b.last = &d
	return nil
}

func (b *BGP) setProblems(p []string) {
	b.mu.Lock()
	changed := !slices.Equal(b.problems, p)
	b.problems = p
	b.mu.Unlock()
	if changed && b.Log != nil {
		for _, s := range p {
			b.Log.Warn("BGP peer not configured as asked", "problem", s)
		}
	}
}

// Problems are what the last Apply could not resolve.
func (b *BGP) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.problems)
}

// SetHealthy couples the advertisement to the node's readiness.
func (b *BGP) SetHealthy(ctx context.Context, healthy bool) error {
	_, err := b.Speaker.SetHealthy(ctx, healthy)
	return err
}

// Status reports the speaker's sessions.
func (b *BGP) Status(ctx context.Context) ([]*fedmeshv1.BGPPeerStatus, error) {
	st, err := b.Speaker.Status(ctx)
	if err != nil {
		return nil, err
	}
	return bgp.StatusToProto(st), nil
}
