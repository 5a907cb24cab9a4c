package store

import (
	"bytes"
	"errors"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

func encodeAll(t *testing.T, cmds ...Command) [][]byte {
	t.Helper()
	out := make([][]byte, len(cmds))
	for i, c := range cmds {
		b, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = b
	}
	return out
}

// A batch entry must leave every replica exactly where one entry per
// command would: same results (a rejected command in the middle included),
// same revisions, same events.
func TestBatchEntryAppliesLikeOneEntryPerCommand(t *testing.T) {
	cmds := encodeAll(t,
		cluster("a", "10.1.0.0/16"),
		upsert("a", 0, false, ep("x", "p1", "10.1.0.1", map[string]string{"app": "web"})),
		upsert("a", 0, false, ep("x", "bad", "192.168.0.1", nil)), // outside the pod CIDR: rejected
		upsert("a", 0, false, ep("x", "p2", "10.1.0.2", map[string]string{"app": "web"})),
	)
	single := NewFSM()
	var want []*Result
	for i, c := range cmds {
		want = append(want, single.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: c}).(*Result))
	}
	batched := NewFSM()
	entry, parts := EncodeBatch(cmds)
	for i := range cmds {
		if !bytes.Equal(parts[i], cmds[i]) {
			t.Fatalf("part %d is not command %d's bytes", i, i)
		}
	}
	got, ok := batched.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: entry}).(BatchResult)
	if !ok || len(got) != len(cmds) {
		t.Fatalf("batch result %#v, want %d results", got, len(cmds))
	}
	for i := range cmds {
		if got[i].Revision != want[i].Revision || (got[i].Err == nil) != (want[i].Err == nil) {
			t.Errorf("command %d: batched %+v, one entry each %+v", i, got[i], want[i])
		}
	}
	if want[2].Err == nil {
		t.Fatal("the endpoint outside the pod CIDR was accepted; the test lost its rejected command")
	}
	if single.Revision() != batched.Revision() || batched.Revision() != 3 {
		t.Fatalf("revision: batched %d, one entry each %d, want 3", batched.Revision(), single.Revision())
	}
	events := func(f *FSM) (out []*fedmeshv1.Event) {
		f.View(func(s *State) {
			batches, _ := s.Log().Since(0, 100)
			for _, b := range batches {
				out = append(out, b.Events...)
			}
		})
		return out
	}
	a, b := events(single), events(batched)
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("events: batched %d, one entry each %d", len(b), len(a))
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			t.Fatalf("event %d differs:\nbatched %v\nsingle  %v", i, b[i], a[i])
		}
	}
}

// The leader's handler decodes a write once; inside a batch entry the FSM
// must still find that decoded command, under the write's part of the entry.
func TestBatchEntryAppliesThePreparedCommands(t *testing.T) {
	cmds := encodeAll(t, cluster("a", "10.1.0.0/16"), cluster("b", "10.2.0.0/16"))
	f := NewFSM()
	// A prepared command that differs from its bytes (which the contract
	// forbids) shows which of the two the FSM applied.
	prepared := cluster("prepared-b", "10.2.0.0/16")
	f.Predecoded().Put(cmds[1], prepared)
	entry, parts := EncodeBatch(cmds)
	f.Predecoded().Move(cmds[1], parts[1])
	res := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: entry}).(BatchResult)
	if res[0].Err != nil || res[1].Err != nil {
		t.Fatalf("results: %v, %v", res[0].Err, res[1].Err)
	}
	f.View(func(s *State) {
		if s.Cluster("prepared-b") == nil || s.Cluster("b") != nil || s.Cluster("a") == nil {
			t.Fatal("the second command was decoded from the entry instead of taken as prepared")
		}
	})
	if n := f.Predecoded().Len(); n != 0 {
		t.Fatalf("%d predecoded commands left after the apply", n)
	}
}

func TestSplitBatchRejectsMalformedEntries(t *testing.T) {
	entry, _ := EncodeBatch([][]byte{{1, 2, 3}, {}, {4}})
	parts, err := SplitBatch(entry)
	if err != nil || len(parts) != 3 || !bytes.Equal(parts[0], []byte{1, 2, 3}) || len(parts[1]) != 0 || !bytes.Equal(parts[2], []byte{4}) {
		t.Fatalf("round trip: %v %v", parts, err)
	}
	for name, b := range map[string][]byte{
		"empty":           nil,
		"not a batch":     {byte(CmdRegisterCluster), 0},
		"no count":        {byte(CmdBatch)},
		"count too large": {byte(CmdBatch), 5, 1, 7},
		"truncated":       entry[:len(entry)-1],
		"trailing bytes":  append(append([]byte{}, entry...), 9),
	} {
		if _, err := SplitBatch(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Only the leader's proposer writes batch entries: one proposed by a client
// (the admin Propose RPC checks with DecodeCommand) is refused.
func TestDecodeCommandRefusesABatchEntry(t *testing.T) {
	entry, _ := EncodeBatch(encodeAll(t, cluster("a", "10.1.0.0/16")))
	if _, err := DecodeCommand(entry); !errors.Is(err, errBatchNotCommand) {
		t.Fatalf("DecodeCommand(batch) = %v, want errBatchNotCommand", err)
	}
}

func TestFSMPanicsOnABatchEntryThatDoesNotSplit(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	NewFSM().Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{byte(CmdBatch), 2, 1}})
}
