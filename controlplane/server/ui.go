package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fedmesh/fedmesh/controlplane/auth"
	"github.com/fedmesh/fedmesh/controlplane/flowui"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// uiServer is a replica's HTTPS listener for the service-graph page.
type uiServer struct {
	page *flowui.Server
	srv  *http.Server
	lis  net.Listener
}

// startUI serves the service-graph page on Config.UIAddr with the
// replica's certificate: it reads this replica's flow store and answers
// Reach from this replica, as the gRPC services do.
func (r *Replica) startUI() error {
	if r.cfg.UIAddr == "" {
		return nil
	}
	if r.sec == nil {
		return errors.New("start replica: the service-graph page (UI address) needs TLS: browsers sign in over HTTPS with the replica's certificate")
	}
	lis, err := net.Listen("tcp", r.cfg.UIAddr)
	if err != nil {
		return fmt.Errorf("listen for the service-graph page on %s: %w", r.cfg.UIAddr, err)
	}
	base := r.cfg.UIURL
	if base == "" {
		base = "https://" + lis.Addr().String()
	}
	reach := &reachService{c: r.core}
	page := flowui.New(flowui.Config{Store: r.flows, Reach: reach.Reach,
		StagedFlows: r.core.stagedFlows, StagedEdges: r.core.stagedSummary, BaseURL: base, Logger: r.log.With("component", "ui")})
	u := &uiServer{page: page, lis: lis, srv: &http.Server{Handler: page, TLSConfig: auth.BrowserTLS(r.sec.cert),
		ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}}
	r.ui = u
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := u.srv.ServeTLS(lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("service-graph page stopped", "err", err)
		}
	}()
	r.log.Info("serving the service-graph page", "addr", lis.Addr().String(), "url", base)
	return nil
}

func (u *uiServer) close() {
	if u != nil {
		_ = u.srv.Close()
	}
}

type uiService struct {
	fedmeshv1.UnimplementedUIServiceServer
	c *Core
}

func (s *uiService) CreateUISession(ctx context.Context, _ *fedmeshv1.CreateUISessionRequest) (*fedmeshv1.CreateUISessionResponse, error) {
	u := s.c.r.ui
	if u == nil {
		return nil, status.Error(codes.FailedPrecondition, "this replica serves no service-graph page: start it with --ui-addr")
	}
	p, ok := auth.PrincipalFrom(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "a UI session is bound to the caller's certificate; this connection has none")
	}
	link, exp, err := u.page.CreateSession(p)
	if err != nil {
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	}
	return &fedmeshv1.CreateUISessionResponse{Url: link, Expires: timestamppb.New(exp)}, nil
}
