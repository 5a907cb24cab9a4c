package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// CommandType is the first byte of every Raft log entry the FSM applies.
// Values are persisted in logs and snapshots: never renumber them.
type CommandType uint8

// Command types.
const (
	CmdRegisterCluster  CommandType = 1
	CmdDeleteCluster    CommandType = 2
	CmdRegisterNode     CommandType = 3
	CmdDeleteNode       CommandType = 4
	CmdReportNodeStatus CommandType = 5
	CmdUpsertEndpoints  CommandType = 6
	CmdDeleteEndpoints  CommandType = 7
	CmdExportServices   CommandType = 8
	CmdUnexportService  CommandType = 9
	CmdApplyPolicies    CommandType = 10
	CmdDeletePolicy     CommandType = 11
	// CmdSetMember and CmdRemoveMember record replicas' gRPC addresses (for
	// leader forwarding); they do not move the revision.
	CmdSetMember    CommandType = 12
	CmdRemoveMember CommandType = 13
	// CmdRecordNodeStatus records a node's status without moving the
	// revision or producing an event. Agents report after every revision
	// they enforce; if a report made a revision (as CmdReportNodeStatus
	// does) every agent would enforce it and report again, forever, and
	// WaitEnforced would chase a revision that moves with each report.
	// CmdReportNodeStatus stays only to replay older logs.
	CmdRecordNodeStatus CommandType = 14
	// CmdConsumeJoinToken marks a join token used (single use across
	// replicas); internal: no revision, no event.
	CmdConsumeJoinToken CommandType = 15
	// CmdUpsertEndpointsFull (log format 3) is CmdUpsertEndpoints whose
	// endpoints keep every label of their pod: their identity counts the
	// labels federation/identity's rule counts (the default filter's, and
	// what stored policies select on). CmdUpsertEndpoints stays for the
	// entries older binaries wrote, and is what a replica writes until
	// every replica applies format 3: its endpoints are stored without
	// fedmesh.io/ labels and count every other label for identity, as
	// those binaries did (see Identities).
	CmdUpsertEndpointsFull CommandType = 17
)

// Command is one decoded log entry.
type Command struct {
	Type CommandType
	// Time is a wall clock reading (Unix nanoseconds): the only clock the
	// FSM sees. With the audit header, the leader's when it proposed the
	// command (StampTime); without, the proposing replica's.
	Time int64
	// Audited says the command carries the audit header (log format 2):
	// Principal is who made it, and objects it changes record both. Entries
	// written before every replica applied format 2 have no header.
	Audited bool
	// Principal is the SPIFFE ID of the client that made the write (the
	// forwarding replica's record of it for a forwarded write), or the
	// replica's own for what a replica proposes itself; empty when unknown
	// (no authentication). Only with Audited.
	Principal string
	Payload   proto.Message
}

// Command encodings. A command without the audit header is
//
//	type byte, varint time, protobuf payload
//
// and with it (log format 2)
//
//	type byte | auditFlag, time as 8 bytes little endian, uvarint length
//	and bytes of the principal, protobuf payload.
//
// The audit header's time has a fixed width so the leader can stamp its own
// clock into an encoded command just before proposing it (StampTime),
// without copying the payload.
const auditFlag = 0x80

// maxPrincipal bounds the principal an entry carries.
const maxPrincipal = 1024

// ErrUnknownCommand is returned by DecodeCommand for a type this binary does
// not know (a log written by a newer version).
var ErrUnknownCommand = errors.New("unknown command type")

// Encode serialises a command (see auditFlag for the layout).
func (c Command) Encode() ([]byte, error) {
	if _, ok := handlers[c.Type]; !ok {
		return nil, fmt.Errorf("encode command %d: %w", c.Type, ErrUnknownCommand)
	}
	if len(c.Principal) > maxPrincipal || (c.Principal != "" && !c.Audited) {
		return nil, fmt.Errorf("encode command %d: principal of %d bytes (at most %d, and only with the audit header)", c.Type, len(c.Principal), maxPrincipal)
	}
	if req, ok := c.Payload.(*fedmeshv1.UpsertEndpointsRequest); ok {
		b := c.appendHeader(make([]byte, 0, 32+len(c.Principal)+1100*len(req.GetEndpoints())))
		if b, ok := appendUpsertEndpoints(b, req); ok {
			return b, nil
		}
	}
	b := c.appendHeader(make([]byte, 0, 32+len(c.Principal)+proto.Size(c.Payload)))
	// Not Deterministic: replicas apply the leader's bytes, never
	// re-encode and compare them, and sorting every label map's keys is a
	// good part of encoding an endpoint batch.
	return proto.MarshalOptions{}.MarshalAppend(b, c.Payload)
}

func (c Command) appendHeader(b []byte) []byte {
	if !c.Audited {
		b = append(b, byte(c.Type))
		return binary.AppendVarint(b, c.Time)
	}
	b = append(b, byte(c.Type)|auditFlag)
	b = binary.LittleEndian.AppendUint64(b, uint64(c.Time))
	b = binary.AppendUvarint(b, uint64(len(c.Principal)))
	return append(b, c.Principal...)
}

// StampTime sets the time of an encoded command with the audit header to t,
// in place, and reports whether it did: the leader stamps its clock on
// every write just before proposing it, so a write's time is the leader's
// whichever replica received it. A command without the header (or not a
// single command) keeps the time it was encoded with.
func StampTime(data []byte, t int64) bool {
	if len(data) < 9 || data[0]&auditFlag == 0 || CommandType(data[0]&^auditFlag) == CmdBatch {
		return false
	}
	binary.LittleEndian.PutUint64(data[1:9], uint64(t))
	return true
}

// DecodeCommand parses an entry written by Encode.
func DecodeCommand(b []byte) (Command, error) {
	c, off, err := decodeHeader(b)
	if err != nil {
		return Command{}, err
	}
	if c.Payload, err = decodePayload(c.Type, b[off:]); err != nil {
		return Command{}, err
	}
	return c, nil
}

// decodeHeader parses everything of a command but its payload, which
// starts at b[off:].
func decodeHeader(b []byte) (c Command, off int, err error) {
	if len(b) == 0 {
		return Command{}, 0, errors.New("decode command: empty entry")
	}
	c.Type = CommandType(b[0] &^ auditFlag)
	c.Audited = b[0]&auditFlag != 0
	if c.Type == CmdBatch {
		return Command{}, 0, fmt.Errorf("decode command: %w", errBatchNotCommand)
	}
	if _, ok := handlers[c.Type]; !ok {
		return Command{}, 0, fmt.Errorf("decode command %d: %w", b[0], ErrUnknownCommand)
	}
	if !c.Audited {
		t, n := binary.Varint(b[1:])
		if n <= 0 {
			return Command{}, 0, errors.New("decode command: bad time varint")
		}
		c.Time = t
		return c, 1 + n, nil
	}
	if len(b) < 9 {
		return Command{}, 0, errors.New("decode command: truncated audit header")
	}
	c.Time = int64(binary.LittleEndian.Uint64(b[1:9]))
	l, n := binary.Uvarint(b[9:])
	if n <= 0 || l > maxPrincipal || l > uint64(len(b)-9-n) {
		return Command{}, 0, errors.New("decode command: bad principal in the audit header")
	}
	off = 9 + n + int(l)
	p := b[9+n : off]
	if !utf8.Valid(p) {
		return Command{}, 0, errors.New("decode command: principal is not UTF-8")
	}
	c.Principal = string(p)
	return c, off, nil
}

// payloadOffset reports the type of a single command and where its payload
// starts; false for anything DecodeCommand would refuse by its header.
func payloadOffset(b []byte) (off int, typ CommandType, ok bool) {
	c, off, err := decodeHeader(b)
	return off, c.Type, err == nil
}

// decodePayload decodes the payload of a command of type t.
func decodePayload(t CommandType, b []byte) (proto.Message, error) {
	if t == CmdUpsertEndpoints || t == CmdUpsertEndpointsFull {
		if req, ok := fastUnmarshalUpsertEndpoints(b); ok {
			return req, nil
		}
	}
	msg := handlers[t].newPayload()
	if err := proto.Unmarshal(b, msg); err != nil {
		return nil, fmt.Errorf("decode command %d payload: %w", t, err)
	}
	return msg, nil
}

// handler applies one command type to the state. It checks only invariants
// that depend on the state (existence, overlaps, address ownership,
// generations, identity space) and checks them all before it mutates
// anything: a command it rejects leaves the state exactly as it was. The
// syntax of a payload was checked once, at the edge (controlplane/server),
// before the command entered the log, and is never checked again here: a
// rule that changed between versions would make replicas of different
// versions apply the same entry differently.
type handler struct {
	name       string
	newPayload func() proto.Message
	apply      func(s *State, tx *txn, payload proto.Message) (*Result, error)
	// internal commands change replica metadata, not the federation: they
	// do not move the revision nor produce events.
	internal bool
	// describe names the cluster and (some of) the objects a command
	// writes, for its audit record (audit.go).
	describe func(p proto.Message, name func(string)) (cluster string, count int)
}

var handlers = map[CommandType]handler{}

// String is the command's name (its API method's, for API writes).
func (t CommandType) String() string {
	if t == CmdBatch {
		return "Batch"
	}
	if h, ok := handlers[t]; ok {
		return h.name
	}
	return fmt.Sprintf("CommandType(%d)", uint8(t))
}

// CommandTypes lists the command types this binary applies (CmdBatch, an
// envelope of commands, is not one), in ascending order: the edge keeps
// one stateless check per type.
func CommandTypes() []CommandType { return sortedKeys(handlers) }

func register[P proto.Message](t CommandType, name string, internal bool, apply func(s *State, tx *txn, p P) (*Result, error)) {
	if _, dup := handlers[t]; dup {
		panic(fmt.Sprintf("store: command type %d registered twice", t))
	}
	var zero P
	handlers[t] = handler{
		name:       name,
		newPayload: func() proto.Message { return zero.ProtoReflect().New().Interface() },
		apply:      func(s *State, tx *txn, p proto.Message) (*Result, error) { return apply(s, tx, p.(P)) },
		internal:   internal,
	}
}

func init() {
	register(CmdRegisterCluster, "RegisterCluster", false, (*State).applyRegisterCluster)
	register(CmdDeleteCluster, "DeleteCluster", false, (*State).applyDeleteCluster)
	register(CmdRegisterNode, "RegisterNode", false, (*State).applyRegisterNode)
	register(CmdDeleteNode, "DeleteNode", false, (*State).applyDeleteNode)
	register(CmdReportNodeStatus, "ReportNodeStatus", false, (*State).applyReportNodeStatus)
	register(CmdUpsertEndpoints, "UpsertEndpoints", false, (*State).applyUpsertEndpoints)
	register(CmdUpsertEndpointsFull, "UpsertEndpoints", false, (*State).applyUpsertEndpointsFull)
	register(CmdDeleteEndpoints, "DeleteEndpoints", false, (*State).applyDeleteEndpoints)
	register(CmdExportServices, "ExportServices", false, (*State).applyExportServices)
	register(CmdUnexportService, "UnexportService", false, (*State).applyUnexportService)
	register(CmdApplyPolicies, "ApplyPolicies", false, (*State).applyApplyPolicies)
	register(CmdDeletePolicy, "DeletePolicy", false, (*State).applyDeletePolicy)
	register(CmdSetMember, "SetMember", true, (*State).applySetMember)
	register(CmdRemoveMember, "RemoveMember", true, (*State).applyRemoveMember)
	register(CmdRecordNodeStatus, "RecordNodeStatus", true, (*State).applyRecordNodeStatus)
	register(CmdConsumeJoinToken, "ConsumeJoinToken", true, (*State).applyConsumeJoinToken)
	registerBGP()
	registerClusterPolicies()
	registerServiceAdvertisements()
	registerStaged()
	registerDescriptions()
}

// Result is what applying a command returns to the proposer.
type Result struct {
	// Revision the command committed at (the current one for internal
	// commands).
	Revision uint64
	// Deleted counts objects a final resync batch removed.
	Deleted uint32
	// Cluster, Node and Policies are the objects as stored, for responses.
	Cluster  *fedmeshv1.Cluster
	Node     *fedmeshv1.Node
	Policies []*fedmeshv1.Policy
	// BGPPeer (with its status) and BGPFilter as stored.
	BGPPeer   *fedmeshv1.BGPPeerConfig
	BGPFilter *fedmeshv1.BGPFilter
	// ClusterPolicies are the ClusterNetworkPolicies as stored.
	ClusterPolicies []*fedmeshv1.ClusterNetworkPolicy
	// Staged is the staged policy as stored (CmdStagePolicy), or the
	// enforced policy a promote stored (CmdPromotePolicy), which sets
	// Replaced when it replaced an enforced one.
	Staged   *fedmeshv1.StagedPolicy
	Replaced bool
	// StagedList is every policy a CmdStagePolicy staged, in request
	// order (Staged is the first).
	StagedList []*fedmeshv1.StagedPolicy
	// Err is why the command was rejected; the state did not change.
	Err error
}

// txn collects the events of the command being applied.
type txn struct {
	rev    uint64
	time   int64
	events []*fedmeshv1.Event
	// audited: the command carries its principal; objects it changes
	// record the principal and the time.
	audited   bool
	principal string
	// ts is time as a Timestamp, made once and shared by every object the
	// command writes (stored objects are never mutated).
	ts *timestamppb.Timestamp
	// metas are the metadata this command gave objects, by their create
	// revision: objects written by one command with the same create
	// revision (a batch of new endpoints, say) share one ObjectMeta, which
	// is most of a 3M-endpoint state's metadata (stored objects are never
	// mutated, so sharing is safe).
	metas map[uint64]*fedmeshv1.ObjectMeta
}

func (tx *txn) updateTime() *timestamppb.Timestamp {
	if tx.ts == nil {
		tx.ts = unixNanoToTimestamp(tx.time)
	}
	return tx.ts
}

// meta is the metadata of an object this command writes, old its previous
// metadata (nil for a new object).
func (tx *txn) meta(old *fedmeshv1.ObjectMeta) *fedmeshv1.ObjectMeta {
	created := tx.rev
	if old != nil && old.GetCreateRevision() != 0 {
		created = old.GetCreateRevision()
	}
	if m, ok := tx.metas[created]; ok {
		return m
	}
	m := &fedmeshv1.ObjectMeta{Revision: tx.rev, CreateRevision: created}
	if tx.audited {
		m.UpdatedBy, m.UpdateTime = tx.principal, tx.updateTime()
	}
	if tx.metas == nil {
		tx.metas = map[uint64]*fedmeshv1.ObjectMeta{}
	}
	tx.metas[created] = m
	return m
}

func (tx *txn) emit(t fedmeshv1.EventType, set func(e *fedmeshv1.Event)) {
	e := &fedmeshv1.Event{Type: t, Revision: tx.rev}
	set(e)
	tx.events = append(tx.events, e)
}

func (tx *txn) putCluster(c *fedmeshv1.Cluster) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_PUT, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Cluster{Cluster: c} })
}
func (tx *txn) delCluster(c *fedmeshv1.Cluster) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_DELETE, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Cluster{Cluster: c} })
}
func (tx *txn) putNode(n *fedmeshv1.Node) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_PUT, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Node{Node: n} })
}
func (tx *txn) delNode(n *fedmeshv1.Node) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_DELETE, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Node{Node: n} })
}
func (tx *txn) putEndpoint(x *fedmeshv1.Endpoint) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_PUT, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Endpoint{Endpoint: x} })
}
func (tx *txn) delEndpoint(x *fedmeshv1.Endpoint) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_DELETE, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Endpoint{Endpoint: x} })
}
func (tx *txn) putExport(x *fedmeshv1.ServiceExport) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_PUT, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_ServiceExport{ServiceExport: x} })
}
func (tx *txn) delExport(x *fedmeshv1.ServiceExport) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_DELETE, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_ServiceExport{ServiceExport: x} })
}
func (tx *txn) putImport(x *fedmeshv1.ServiceImport) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_PUT, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_ServiceImport{ServiceImport: x} })
}
func (tx *txn) delImport(x *fedmeshv1.ServiceImport) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_DELETE, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_ServiceImport{ServiceImport: x} })
}
func (tx *txn) putPolicy(x *fedmeshv1.Policy) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_PUT, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Policy{Policy: x} })
}
func (tx *txn) delPolicy(x *fedmeshv1.Policy) {
	tx.emit(fedmeshv1.EventType_EVENT_TYPE_DELETE, func(e *fedmeshv1.Event) { e.Object = &fedmeshv1.Event_Policy{Policy: x} })
}
