package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// ErrStopped is returned by calls made after Run returned.
var ErrStopped = errors.New("bgp speaker stopped")

// Speaker owns one embedded GoBGP server and reconciles it to the desired
// state. All mutations run on the goroutine inside Run, one at a time;
// Apply, SetHealthy and Status hand it an operation and wait for its result,
// so they are safe from any goroutine and block until Run picks them up.
type Speaker struct {
	log  *slog.Logger
	now  func() time.Time
	errs *peerErrors
	ops  chan func()
	done chan struct{}

	// Owned by the Run goroutine.
	srv        *server.BgpServer
	desired    Desired
	healthy    bool
	applied    *Desired // effective state GoBGP holds; nil = not started
	restarting bool     // the next peers added carry the Restart State bit
}

// Option configures a Speaker.
type Option func(*Speaker)

// WithLogger sets the logger (default slog.Default()); GoBGP's own log
// lines go to it prefixed "gobgp: ".
func WithLogger(l *slog.Logger) Option { return func(s *Speaker) { s.log = l } }

// WithClock sets the clock used for session uptimes (default time.Now).
func WithClock(now func() time.Time) Option { return func(s *Speaker) { s.now = now } }

// WithInitialHealth sets the health the speaker assumes before the first
// SetHealthy (default healthy; see the package doc for why).
func WithInitialHealth(healthy bool) Option { return func(s *Speaker) { s.healthy = healthy } }

// New returns a Speaker; nothing runs until Run.
func New(opts ...Option) *Speaker {
	s := &Speaker{
		log:     slog.Default(),
		now:     time.Now,
		errs:    newPeerErrors(),
		ops:     make(chan func()),
		done:    make(chan struct{}),
		healthy: true,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Run starts the embedded GoBGP server and serves operations until ctx is
// done. Cancelling ctx is a deliberate stop: our prefixes are withdrawn
// by UPDATE, then every session gets a CEASE, so the peers drop our routes
// at once, provided the process lives until Run returns: exiting earlier
// can close the sockets first, which the peers take for a restart. To keep the
// routes at the peers across an agent restart (graceful restart), let the
// process exit or die without cancelling: the kernel closes the TCP
// sessions and the peers hold our routes as stale for the restart time.
// GoBGP's internal goroutines outlive Run; run one Speaker per process.
func (s *Speaker) Run(ctx context.Context) error {
	defer close(s.done)
	s.serve()
	s.restarting = true
	for {
		select {
		case <-ctx.Done():
			if s.applied != nil {
				stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				s.withdrawBeforeStop(stopCtx)
				err := s.srv.StopBgp(stopCtx, &api.StopBgpRequest{})
				cancel()
				if err != nil {
					return fmt.Errorf("stop bgp: %w", err)
				}
			}
			return nil
		case op := <-s.ops:
			op()
		}
	}
}

// serve starts a new GoBGP server. GoBGP v4's StopBgp ends a server for
// good (its loop returns and refuses every later call), so a stop that is
// followed by a start (a disable, or an ASN or router ID change) needs a
// fresh one.
func (s *Speaker) serve() {
	s.srv = server.NewBgpServer(server.LoggerOption(slog.New(newLogHandler(s.log.Handler(), s.errs)), nil))
	go s.srv.Serve()
}

func (s *Speaker) do(ctx context.Context, f func() error) error {
	res := make(chan error, 1)
	select {
	case s.ops <- func() { res <- f() }:
	case <-s.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Apply validates d and reconciles GoBGP to it (with the current health
// applied, see Effective). Invalid input returns an error wrapping one
// *FieldError per problem and changes nothing. It returns the actions it
// carried out; an unchanged d carries out none. After an error from GoBGP
// the actions that took effect stay applied (and are returned) and the
// next Apply retries the rest.
func (s *Speaker) Apply(ctx context.Context, d Desired) ([]Action, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("validate bgp desired state: %w", err)
	}
	var done []Action
	err := s.do(ctx, func() error {
		s.desired = d
		var err error
		done, err = s.reconcile(ctx)
		return err
	})
	return done, err
}

// SetHealthy sets the node's health (true when the dataplane enforces a
// recent revision) and reconciles the advertisement accordingly. Calling
// it with an unchanged value carries out no action.
func (s *Speaker) SetHealthy(ctx context.Context, healthy bool) ([]Action, error) {
	var done []Action
	err := s.do(ctx, func() error {
		s.healthy = healthy
		var err error
		done, err = s.reconcile(ctx)
		return err
	})
	return done, err
}

// Status returns one entry per configured peer, sorted by address; nil
// while the speaker is off.
func (s *Speaker) Status(ctx context.Context) ([]PeerStatus, error) {
	var out []PeerStatus
	err := s.do(ctx, func() error {
		if s.applied == nil {
			return nil
		}
		now := s.now()
		configured := make(map[netip.Addr]Peer, len(s.applied.Peers))
		for _, p := range s.applied.Peers {
			configured[p.Address] = p
		}
		err := s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
			addr, _ := netip.ParseAddr(p.GetConf().GetNeighborAddress())
			st := peerStatusFromAPI(p, now, s.errs.get(addr))
			st.Name, st.LocalASN = configured[addr].Name, configured[addr].localASN(s.applied.LocalASN)
			out = append(out, st)
		})
		if err != nil {
			return fmt.Errorf("list bgp peers: %w", err)
		}
		slices.SortFunc(out, func(a, b PeerStatus) int { return a.Address.Compare(b.Address) })
		return nil
	})
	return out, err
}

// reconcile runs on the Run goroutine.
func (s *Speaker) reconcile(ctx context.Context) ([]Action, error) {
	return s.reconcileTo(ctx, Effective(s.desired, s.healthy))
}

// withdrawFlushTimeout bounds how long a deliberate stop waits for its
// withdrawals to be written before it ends the sessions anyway.
const withdrawFlushTimeout = 2 * time.Second

// withdrawBeforeStop withdraws every advertised prefix and waits until each
// established session that carried some has written an UPDATE since, so
// the peers drop our routes even when the CEASE that follows is lost. It
// can be: GoBGP has been seen (rarely, under load) closing a session whose
// NOTIFICATION never reached the peer, and a ToR that sees only the TCP
// session end keeps our routes as stale for the whole graceful-restart
// time. The withdrawal is what a deliberate stop means; the CEASE then
// only ends the session. The wait is for any UPDATE written after the
// withdrawal was queued: one that was already queued (an End-of-RIB right
// after the session came up) can end it early, which only narrows the
// window back to the CEASE's. Runs on the Run goroutine.
func (s *Speaker) withdrawBeforeStop(ctx context.Context) {
	if len(s.applied.Prefixes) == 0 {
		return
	}
	before, err := s.establishedCounters(ctx)
	if err != nil {
		s.log.Warn("bgp stop: cannot read the sessions' counters; ending them without waiting for the withdrawal", "err", err)
		before = nil
	}
	// Only sessions that carry a path get a withdrawal to wait for.
	maps.DeleteFunc(before, func(_ string, c sessionCounters) bool { return c.advertised == 0 })
	want := *s.applied
	want.Prefixes = nil
	if _, err := s.reconcileTo(ctx, want); err != nil {
		s.log.Warn("bgp stop: withdrawing the prefixes failed; the CEASE alone ends the sessions", "err", err)
		return
	}
	start := time.Now()
	deadline := start.Add(withdrawFlushTimeout)
	waited := len(before)
	defer func() { s.log.Info("bgp stop: prefixes withdrawn", "sessions", waited, "took", time.Since(start)) }()
	for len(before) > 0 {
		now, err := s.establishedCounters(ctx)
		if err != nil {
			s.log.Warn("bgp stop: cannot read the sessions' counters", "err", err)
			return
		}
		for addr, c := range before {
			// Written, or the session is gone.
			if n, ok := now[addr]; !ok || n.updates != c.updates {
				delete(before, addr)
			}
		}
		if len(before) == 0 {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.log.Warn("bgp stop: withdrawal not written to every peer in time; ending the sessions", "peers", slices.Collect(maps.Keys(before)))
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sessionCounters is what a stop reads of one established session.
type sessionCounters struct {
	updates    uint64 // UPDATEs written to the socket (counted after the write)
	advertised uint64 // paths in its Adj-RIB-Out
}

// establishedCounters returns the counters of every established session,
// by neighbor address.
func (s *Speaker) establishedCounters(ctx context.Context) (map[string]sessionCounters, error) {
	out := map[string]sessionCounters{}
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		if p.GetState().GetSessionState() != api.PeerState_SESSION_STATE_ESTABLISHED {
			return
		}
		c := sessionCounters{updates: p.GetState().GetMessages().GetSent().GetUpdate()}
		for _, af := range p.GetAfiSafis() {
			c.advertised += af.GetState().GetAdvertised()
		}
		out[p.GetConf().GetNeighborAddress()] = c
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// reconcileTo carries GoBGP from s.applied to want (an effective state).
func (s *Speaker) reconcileTo(ctx context.Context, want Desired) ([]Action, error) {
	start := time.Now()
	plan, w := diff(s.applied, &want)
	for i := 0; i < len(plan); {
		run := nextRun(plan[i:])
		ok, err := s.execute(ctx, run, &want)
		if err != nil {
			done := append(plan[:i:i], ok...)
			s.applied = advance(s.applied, done, &want)
			return done, err
		}
		i += len(run)
	}
	// The whole plan took effect: GoBGP holds the normalized want (what
	// advance would fold the plan into, without the 10,000-entry fold).
	s.applied = w
	if w != nil {
		s.restarting = false
	}
	if len(plan) > 0 {
		s.log.Info("bgp reconciled", "actions", len(plan), "healthy", s.healthy, "took", time.Since(start))
	}
	return plan, nil
}

// nextRun returns the leading actions of a plan that one GoBGP call
// carries out: all consecutive path actions of one kind (Diff groups them),
// or else the single first action. Batching paths is what makes a
// 10,000-prefix plan one management operation instead of 10,000.
func nextRun(plan []Action) []Action {
	n := 1
	if k := plan[0].Kind; k == ActionAddPath || k == ActionDeletePath {
		for n < len(plan) && plan[n].Kind == k {
			n++
		}
	}
	return plan[:n]
}

// execute carries out one run of actions (see nextRun) against GoBGP and
// returns the ones now in effect: all of them, or on error the ones that
// still succeeded (see pathBatch), never one that did not.
func (s *Speaker) execute(ctx context.Context, run []Action, want *Desired) ([]Action, error) {
	a := run[0]
	switch a.Kind {
	case ActionAddPath:
		return pathBatch(run, s.addPaths)
	case ActionDeletePath:
		return pathBatch(run, s.deletePaths)
	}
	if err := s.executeOne(ctx, a, want); err != nil {
		return nil, err
	}
	return run[:1], nil
}

// executeOne carries out one action that is not a path action.
func (s *Speaker) executeOne(ctx context.Context, a Action, want *Desired) error {
	switch a.Kind {
	case ActionStop:
		if err := s.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
			return fmt.Errorf("stop bgp: %w", err)
		}
		s.serve()
	case ActionStart:
		if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: apiGlobal(a.Global)}); err != nil {
			return fmt.Errorf("start bgp (asn %d, router id %s, port %d): %w; is another BGP daemon holding the port?",
				a.Global.ASN, a.Global.RouterID, apiGlobal(a.Global).ListenPort, err)
		}
	case ActionSetPolicy:
		if err := s.setPolicy(ctx, want); err != nil {
			return err
		}
	case ActionAddPeer:
		p := apiPeer(a.Peer, want.GracefulRestart, want.RouterID, s.restarting)
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: p}); err != nil {
			return fmt.Errorf("add bgp peer %s: %w", a.Peer.Address, err)
		}
	case ActionUpdatePeer:
		p := apiPeer(a.Peer, want.GracefulRestart, want.RouterID, false)
		if _, err := s.srv.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: p}); err != nil {
			return fmt.Errorf("update bgp peer %s: %w", a.Peer.Address, err)
		}
	case ActionDeletePeer:
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.Peer.Address.String()}); err != nil {
			return fmt.Errorf("delete bgp peer %s: %w", a.Peer.Address, err)
		}
		s.errs.forget(a.Peer.Address)
	default:
		return fmt.Errorf("execute bgp action %s: unknown kind", a.Kind)
	}
	return nil
}

// setPolicy replaces GoBGP's routing policy with want's and re-evaluates
// what the sessions already exchanged (a soft reset: no session drops).
func (s *Speaker) setPolicy(ctx context.Context, want *Desired) error {
	if err := s.srv.SetPolicies(ctx, apiPolicies(want)); err != nil {
		return fmt.Errorf("set bgp routing policy: %w", err)
	}
	for _, a := range policyAssignments() {
		if err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: a}); err != nil {
			return fmt.Errorf("assign bgp routing policy %s: %w", a.GetPolicies()[0].GetName(), err)
		}
	}
	if s.applied == nil || len(s.applied.Peers) == 0 {
		return nil // no session yet: the policy applies from the first route
	}
	if err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: "all", Soft: true, Direction: api.ResetPeerRequest_DIRECTION_BOTH}); err != nil {
		return fmt.Errorf("re-evaluate routes under the new bgp policy: %w", err)
	}
	return nil
}

// addPaths advertises every prefix of the batch in one AddPath call: one
// management operation in GoBGP, whose send loop then packs the queued
// paths into few UPDATEs.
func (s *Speaker) addPaths(batch []Action) error {
	paths, err := apiPaths(batch)
	if err != nil {
		return err
	}
	if _, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: paths}); err != nil {
		return fmt.Errorf("advertise %s: %w", batchName(batch), err)
	}
	return nil
}

// deletePaths withdraws every prefix of the batch in one DeletePath call.
func (s *Speaker) deletePaths(batch []Action) error {
	paths, err := apiPaths(batch)
	if err != nil {
		return err
	}
	if err := s.srv.DeletePath(apiutil.DeletePathRequest{Paths: paths}); err != nil {
		return fmt.Errorf("withdraw %s: %w", batchName(batch), err)
	}
	return nil
}

func apiPaths(batch []Action) ([]*apiutil.Path, error) {
	age := time.Now().Unix()
	paths := make([]*apiutil.Path, len(batch))
	for i, a := range batch {
		p, err := apiPath(a.Prefix, age)
		if err != nil {
			return nil, err
		}
		paths[i] = p
	}
	return paths, nil
}

// batchName names a batch in an error: the prefix itself when alone.
func batchName(batch []Action) string {
	if len(batch) == 1 {
		return batch[0].Prefix.CIDR.String()
	}
	return fmt.Sprintf("%d prefixes (%s..%s)", len(batch), batch[0].Prefix.CIDR, batch[len(batch)-1].Prefix.CIDR)
}

// pathBatch carries out a run of path actions of one kind with call, in
// one call when that succeeds, and returns the actions in effect. GoBGP
// v4.8.0 gives no per-path result on failure: AddPath adds every path it
// can and then returns only the last error (its per-path responses are
// dropped), DeletePath rejects the whole batch at the first bad path. A
// path's failure there is deterministic (a malformed path, or the server
// not running, which fails every path), and adding or withdrawing a path
// again is idempotent, so after a failed batch each path is tried alone:
// the ones that succeed are exactly the ones GoBGP holds (or has
// withdrawn). The error is the first single failure; nil when every path
// succeeded alone, since GoBGP then holds the whole run.
func pathBatch(run []Action, call func([]Action) error) ([]Action, error) {
	err := call(run)
	if err == nil {
		return run, nil
	}
	if len(run) == 1 {
		return nil, err
	}
	var done []Action
	var first error
	for i := range run {
		if err := call(run[i : i+1]); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		done = append(done, run[i])
	}
	return done, first
}

// advance returns the applied state after the actions (a subsequence of a
// plan, in plan order) succeeded, in one pass so a 10,000-prefix plan stays linear. Pure;
// a whole plan from Diff(applied, want) folded over applied yields want.
func advance(applied *Desired, actions []Action, want *Desired) *Desired {
	cur := applied
	var policy Policy
	if cur != nil {
		policy = cur.Policy
	}
	peers := map[netip.Addr]Peer{}
	paths := map[netip.Prefix]Prefix{}
	load := func() {
		clear(peers)
		clear(paths)
		if cur == nil {
			return
		}
		for _, p := range cur.Peers {
			peers[p.Address] = p
		}
		for _, p := range cur.Prefixes {
			paths[p.CIDR] = p
		}
	}
	load()
	for _, a := range actions {
		switch a.Kind {
		case ActionStop:
			cur = nil
			load()
		case ActionStart:
			cur = &Desired{
				LocalASN: a.Global.ASN, RouterID: a.Global.RouterID, ListenPort: a.Global.ListenPort,
				ListenAddresses: slices.Clone(a.Global.ListenAddresses), GracefulRestart: want.GracefulRestart,
			}
			policy = Policy{} // a started GoBGP has none
			load()
		case ActionAddPeer, ActionUpdatePeer:
			peers[a.Peer.Address] = a.Peer
		case ActionDeletePeer:
			delete(peers, a.Peer.Address)
		case ActionSetPolicy:
			policy = a.Policy
		case ActionAddPath:
			paths[a.Prefix.CIDR] = a.Prefix
		case ActionDeletePath:
			delete(paths, a.Prefix.CIDR)
		}
	}
	if cur == nil {
		return nil
	}
	n := *cur
	n.Policy = policy
	n.Peers = slices.Collect(maps.Values(peers))
	n.Prefixes = slices.Collect(maps.Values(paths))
	n = normalize(&n)
	return &n
}
