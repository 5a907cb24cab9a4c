package store

import (
	"encoding/binary"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/federation/model"
)

// JoinTokenRecordSize is the size of CmdConsumeJoinToken's payload: the
// token's 16-byte id, then its expiry in Unix nanoseconds (big endian).
const JoinTokenRecordSize = 16 + 8

// ErrTokenUsed is a join token consumed before (on any replica).
var ErrTokenUsed error = tokenUsedError{}

type tokenUsedError struct{}

func (tokenUsedError) Error() string { return "join token already used" }

// GRPCStatus lets the error cross a forwarded Propose: the follower maps
// AlreadyExists back to ErrTokenUsed.
func (tokenUsedError) GRPCStatus() *status.Status {
	return status.New(codes.AlreadyExists, "join token already used")
}

// ConsumeJoinTokenPayload encodes the payload of CmdConsumeJoinToken.
func ConsumeJoinTokenPayload(id [16]byte, expiresUnixNano int64) *wrapperspb.BytesValue {
	b := make([]byte, JoinTokenRecordSize)
	copy(b, id[:])
	binary.BigEndian.PutUint64(b[16:], uint64(expiresUnixNano))
	return wrapperspb.Bytes(b)
}

// applyConsumeJoinToken records a join token as used, once: a second
// consume of the same id fails with ErrTokenUsed on every replica. In the
// same step it forgets tokens expired by the command's time (the
// proposer's clock, so replicas agree); an expired token no longer
// verifies anyway.
func (s *State) applyConsumeJoinToken(tx *txn, p *wrapperspb.BytesValue) (*Result, error) {
	b := p.GetValue()
	if len(b) != JoinTokenRecordSize {
		return nil, model.AsError(field.ErrorList{field.Invalid(field.NewPath("token"), len(b), "want a 16-byte id and an 8-byte expiry")})
	}
	var id [16]byte
	copy(id[:], b)
	if _, used := s.usedTokens[id]; used {
		return nil, ErrTokenUsed
	}
	for k, exp := range s.usedTokens {
		if exp < tx.time {
			delete(s.usedTokens, k)
		}
	}
	s.usedTokens[id] = int64(binary.BigEndian.Uint64(b[16:]))
	return &Result{}, nil
}

// UsedTokens is how many consumed join tokens are remembered.
func (s *State) UsedTokens() int { return len(s.usedTokens) }
