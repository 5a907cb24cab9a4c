package store

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// CmdBatch is a log entry that carries several commands, applied in order
// as if each had its own entry: each bumps the revision and gets its own
// Result (BatchResult). The leader groups concurrent writes into one such
// entry, so a Raft append, its log-store transaction and its message to
// every follower carry one entry instead of one per write: per-entry costs
// (encoding, bbolt keys, Raft bookkeeping) are paid once per group. Only the
// leader's proposer writes it; it is never accepted from a client.
//
// Layout: CmdBatch, uvarint count, then per command uvarint length and the
// command's bytes as Command.Encode wrote them.
const CmdBatch CommandType = 16

// Log entry formats. Replicas publish the newest they apply (LogFormat) in
// their member record; an entry of a format is written only once every
// replica of the configuration has published at least that format, so an
// older replica never meets an entry it cannot apply.
const (
	// LogFormatBatch adds CmdBatch entries, which the leader's proposer
	// writes.
	LogFormatBatch = 1
	// LogFormatAudit adds the audit header to commands (their principal,
	// and a time the leader stamps), which the replica encoding a write
	// adds.
	LogFormatAudit = 2
	// LogFormatFullLabels adds CmdUpsertEndpointsFull: endpoints keep every
	// pod label and their identities follow federation/identity's rule.
	// The replica encoding an endpoint write picks that type.
	LogFormatFullLabels = 3
	// LogFormatBGP adds the BGP peer and filter commands (CmdApplyBGPPeer
	// and the rest, bgppeers.go), which the edge refuses until then.
	LogFormatBGP = 4
	// Format 5 (LogFormatClusterPolicies, clusterpolicies.go) adds the
	// ClusterNetworkPolicy commands.
	//
	// LogFormatServices adds ClusterSetIPs and liveness
	// (CmdConfigureServices, CmdSetLiveness; clusterset.go) and exports
	// carrying affinity and per-backend node and readiness, which the edge
	// writes only from then on.
	LogFormatServices = 6
	// LogFormatServiceAdvertisements adds CmdSyncServiceAdvertisements
	// (svcadverts.go), which the edge refuses until then.
	LogFormatServiceAdvertisements = 7
	// Format 8 (LogFormatStaged, staged.go) adds the staged policy
	// commands, which the edge refuses until then.
	//
	// LogFormat is the newest format this binary applies.
	LogFormat = LogFormatStaged
)

// BatchResult is what the FSM returns for a CmdBatch entry: one Result per
// command, in order.
type BatchResult []*Result

// errBatchNotCommand is DecodeCommand's answer for a batch entry.
var errBatchNotCommand = errors.New("a batch entry is not a single command")

// EncodeBatch builds a CmdBatch entry of cmds (each Command.Encode output)
// and returns it with, per command, the sub-slice of the entry holding its
// bytes.
func EncodeBatch(cmds [][]byte) (entry []byte, parts [][]byte) {
	size := 1 + binary.MaxVarintLen64
	for _, c := range cmds {
		size += binary.MaxVarintLen64 + len(c)
	}
	entry = make([]byte, 0, size)
	entry = append(entry, byte(CmdBatch))
	entry = binary.AppendUvarint(entry, uint64(len(cmds)))
	offs := make([]int, len(cmds))
	for i, c := range cmds {
		entry = binary.AppendUvarint(entry, uint64(len(c)))
		offs[i] = len(entry)
		entry = append(entry, c...)
	}
	parts = make([][]byte, len(cmds))
	for i, c := range cmds {
		parts[i] = entry[offs[i] : offs[i]+len(c) : offs[i]+len(c)]
	}
	return entry, parts
}

// SplitBatch returns the commands of a CmdBatch entry, as sub-slices of b.
func SplitBatch(b []byte) ([][]byte, error) {
	if len(b) == 0 || CommandType(b[0]) != CmdBatch {
		return nil, errors.New("split batch: not a batch entry")
	}
	b = b[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, errors.New("split batch: bad command count")
	}
	b = b[k:]
	parts := make([][]byte, 0, n)
	for i := range n {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, fmt.Errorf("split batch: command %d: bad length", i)
		}
		parts = append(parts, b[k:k+int(l):k+int(l)])
		b = b[k+int(l):]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("split batch: %d bytes after the last command", len(b))
	}
	return parts, nil
}
