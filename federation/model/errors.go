// Package model owns the validation of fedmesh's API objects, shared by every
// binary: the control plane validates at its API edge, syncers and fedctl
// validate before they send. Every error names the field path
// (cluster.podCIDRs[1]) and the reason, using apimachinery's field errors.
package model

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// ValidationError is a rejected object: one entry per bad field. It converts
// itself into an InvalidArgument gRPC status with an errdetails.BadRequest,
// so a handler can return it as it is.
type ValidationError struct {
	Errs field.ErrorList
}

// Error joins every field error: `cluster.podCIDRs[1]: Invalid value: "x": ...`.
func (e *ValidationError) Error() string { return e.Errs.ToAggregate().Error() }

// GRPCStatus is what grpc-go sends for this error.
func (e *ValidationError) GRPCStatus() *status.Status {
	st := status.New(codes.InvalidArgument, e.Error())
	br := &errdetails.BadRequest{}
	for _, fe := range e.Errs {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field:       fe.Field,
			Description: fe.ErrorBody(),
		})
	}
	if withDetails, err := st.WithDetails(br); err == nil {
		return withDetails
	}
	return st
}

// AsError returns nil for an empty list, else a *ValidationError.
func AsError(errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return &ValidationError{Errs: errs}
}

// FieldErrors returns the field errors inside err, or nil when err is not a
// validation error.
func FieldErrors(err error) field.ErrorList {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.Errs
	}
	return nil
}
