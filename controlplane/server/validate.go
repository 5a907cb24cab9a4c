package server

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fedmesh/fedmesh/controlplane/store"
	"github.com/fedmesh/fedmesh/federation/model"
	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// Validation happens once, at the edge: here, on the replica that encodes a
// command, before it is proposed (locally or forwarded to the leader). The
// FSM checks only what depends on the state it applies to (existence,
// overlaps, generations): a syntax rule that changes between versions would
// otherwise make replicas of different versions disagree about an entry an
// older leader committed. Every command type the store applies has exactly
// one stateless check in this table, and every path that encodes a command
// (propose, applyLocal, the join-token ledger) runs it; the leader does not
// check a forwarded command again, since the forwarding replica did.
var validators = map[store.CommandType]func(proto.Message) error{}

func validator[P proto.Message](t store.CommandType, check func(P) error) {
	if _, dup := validators[t]; dup {
		panic(fmt.Sprintf("server: validator of command %d registered twice", t))
	}
	validators[t] = func(m proto.Message) error {
		p, ok := m.(P)
		if !ok {
			return status.Errorf(codes.Internal, "command %d carries a %T", t, m)
		}
		return check(p)
	}
}

func init() {
	validator(store.CmdRegisterCluster, func(r *fedmeshv1.RegisterClusterRequest) error { return model.ValidateCluster(r.GetCluster()) })
	validator(store.CmdDeleteCluster, func(r *fedmeshv1.DeleteClusterRequest) error {
		return model.AsError(model.ClusterName(field.NewPath("name"), r.GetName()))
	})
	// The node's pod CIDRs lie inside its cluster's: the FSM checks that
	// against the cluster as it is when the command applies.
	validator(store.CmdRegisterNode, func(r *fedmeshv1.RegisterNodeRequest) error { return model.ValidateNode(r.GetNode(), nil) })
	validator(store.CmdDeleteNode, func(r *fedmeshv1.DeleteNodeRequest) error { return nodeKeyErr(r.GetCluster(), r.GetName()) })
	validator(store.CmdReportNodeStatus, validateNodeStatus)
	validator(store.CmdRecordNodeStatus, validateNodeStatus)
	validator(store.CmdUpsertEndpoints, func(r *fedmeshv1.UpsertEndpointsRequest) error { return model.ValidateUpsertEndpoints(r, nil) })
	validator(store.CmdUpsertEndpointsFull, func(r *fedmeshv1.UpsertEndpointsRequest) error { return model.ValidateUpsertEndpoints(r, nil) })
	validator(store.CmdDeleteEndpoints, model.ValidateDeleteEndpoints)
	validator(store.CmdExportServices, validateExportServices)
	validator(store.CmdUnexportService, func(r *fedmeshv1.UnexportServiceRequest) error {
		errs := model.ClusterName(field.NewPath("cluster"), r.GetCluster())
		errs = append(errs, model.Namespace(field.NewPath("namespace"), r.GetNamespace())...)
		if r.GetName() == "" {
			errs = append(errs, field.Required(field.NewPath("name"), ""))
		}
		return model.AsError(errs)
	})
	validator(store.CmdApplyPolicies, model.ValidateApplyPolicies)
	validator(store.CmdDeletePolicy, func(r *fedmeshv1.DeletePolicyRequest) error {
		return model.ValidatePolicyKey(field.NewPath("key"), r.GetKey())
	})
	validator(store.CmdSetMember, validateMemberID)
	validator(store.CmdRemoveMember, validateMemberID)
	validator(store.CmdConsumeJoinToken, func(p *wrapperspb.BytesValue) error {
		if n := len(p.GetValue()); n != store.JoinTokenRecordSize {
			return model.AsError(field.ErrorList{field.Invalid(field.NewPath("token"), n, fmt.Sprintf("want %d bytes: a 16-byte id and an 8-byte expiry", store.JoinTokenRecordSize))})
		}
		return nil
	})
}

func nodeKeyErr(cluster, name string) error {
	errs := model.ClusterName(field.NewPath("cluster"), cluster)
	if name == "" {
		errs = append(errs, field.Required(field.NewPath("name"), ""))
	}
	return model.AsError(errs)
}

func validateNodeStatus(r *fedmeshv1.ReportNodeStatusRequest) error {
	if err := nodeKeyErr(r.GetCluster(), r.GetName()); err != nil {
		return err
	}
	if r.GetStatus() == nil {
		return model.AsError(field.ErrorList{field.Required(field.NewPath("status"), "")})
	}
	return nil
}

func validateMemberID(m *fedmeshv1.Member) error {
	if m.GetId() == "" {
		return model.AsError(field.ErrorList{field.Required(field.NewPath("id"), "")})
	}
	return nil
}

// validateCommand runs the stateless check of a command about to be
// encoded. A command type without a check is refused: nothing enters the
// log unchecked.
func validateCommand(t store.CommandType, payload proto.Message) error {
	check, ok := validators[t]
	if !ok {
		return status.Errorf(codes.Internal, "command %d has no edge validation; refusing to propose it", t)
	}
	return check(payload)
}
