package server

import (
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// What the leader answers for one forwarded write is what the follower's
// caller gets: a result, the store's rejection with its details, or — for a
// refusal by a replica that does not lead — errForwardNotLeader, which
// makes the follower route the write again.
func TestForwardResultKeepsRejectionsAndMarksNotLeader(t *testing.T) {
	rejected := model.AsError(field.ErrorList{field.NotFound(field.NewPath("cluster"), "ghost")})
	cases := []struct {
		name      string
		result    *fedmeshv1.ProposeResult
		wantRev   uint64
		wantCode  codes.Code
		notLeader bool
	}{
		{"applied", &fedmeshv1.ProposeResult{Response: &fedmeshv1.ProposeResponse{Revision: 42}}, 42, codes.OK, false},
		{"rejected by the store", proposeFailure(rejected), 0, status.Convert(rejected).Code(), false},
		{"not the leader", proposeFailure(notLeaderStatus("cp3")), 0, codes.Unavailable, true},
		{"outcome unknown", proposeFailure(raftError(errors.New("leadership lost"))), 0, codes.Unknown, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := forwardResult(c.result)
			if got := errors.Is(err, errForwardNotLeader); got != c.notLeader {
				t.Fatalf("errors.Is(%v, errForwardNotLeader) = %v, want %v", err, got, c.notLeader)
			}
			if code := status.Code(err); !c.notLeader && code != c.wantCode {
				t.Fatalf("code %v (%v), want %v", code, err, c.wantCode)
			}
			if c.wantCode == codes.OK && res.Revision != c.wantRev {
				t.Fatalf("revision %d, want %d", res.Revision, c.wantRev)
			}
			if c.name == "rejected by the store" && len(status.Convert(err).Details()) == 0 {
				t.Fatalf("the store's rejection lost its details: %v", err)
			}
		})
	}
}
