package store

import (
	"bytes"
	"testing"

	"github.com/hashicorp/raft"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// appliedCluster applies data as entry index and reports whether cluster
// name now exists.
func appliedCluster(t *testing.T, f *FSM, index uint64, data []byte, name string) bool {
	t.Helper()
	if r := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(*Result); r.Err != nil {
		t.Fatalf("apply: %v", r.Err)
	}
	found := false
	f.View(func(s *State) { found = s.Cluster(name) != nil })
	return found
}

// The pre-decode cache may spare work; it must never change what is
// applied. A registered payload that does not match its bytes (which the
// contract forbids) shows which one the FSM applied.
func TestPredecodedPayloadIsUsedOnlyForTheBytesItWasRegisteredFor(t *testing.T) {
	tests := []struct {
		name        string
		act         func(p *Predecoded, data []byte) []byte // returns the bytes Raft applies
		wantCached  bool
		wantEntries int
	}{
		{"the leader applies the very slice it registered", func(p *Predecoded, data []byte) []byte { return data }, true, 0},
		{"a follower applies a copy of the bytes", func(p *Predecoded, data []byte) []byte { return bytes.Clone(data) }, false, 1},
		{"bytes changed after registration are decoded", func(p *Predecoded, data []byte) []byte {
			i := bytes.Index(data, []byte("10.2.0.0/16"))
			copy(data[i:], "10.3.0.0/16")
			return data
		}, false, 0},
		{"a forgotten entry is decoded", func(p *Predecoded, data []byte) []byte { p.Forget(data); return data }, false, 0},
		{"a moved entry is found under its new bytes", func(p *Predecoded, data []byte) []byte {
			to := bytes.Clone(data)
			p.Move(data, to)
			return to
		}, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFSM()
			data := encodeAll(t, cluster("b", "10.2.0.0/16"))[0]
			// The registered payload names another cluster than the bytes.
			f.Predecoded().Put(data, cluster("cached", "10.2.0.0/16"))
			applied := tt.act(f.Predecoded(), data)
			if got := appliedCluster(t, f, 1, applied, "cached"); got != tt.wantCached {
				t.Fatalf("applied the registered payload: %v, want %v", got, tt.wantCached)
			}
			if n := f.Predecoded().Len(); n != tt.wantEntries {
				t.Fatalf("%d entries left, want %d", n, tt.wantEntries)
			}
		})
	}
}

// A registered payload is applied at most once: the same slice applied
// again (raft never does; a replay reads the log) is decoded.
func TestPredecodedPayloadIsTakenOnce(t *testing.T) {
	f := NewFSM()
	data := encodeAll(t, cluster("b", "10.2.0.0/16"))[0]
	f.Predecoded().Put(data, cluster("cached", "10.9.0.0/16"))
	if !appliedCluster(t, f, 1, data, "cached") {
		t.Fatal("registered payload not applied")
	}
	if !appliedCluster(t, f, 2, data, "b") {
		t.Fatal("second apply of the same slice did not decode its bytes")
	}
}

// A caller that never calls Forget (its write failed before Raft took it)
// costs bounded memory: old generations are dropped, and what is evicted
// is decoded, not lost.
func TestPredecodedEntriesNeverForgottenStayBounded(t *testing.T) {
	f := NewFSM()
	p := f.Predecoded()
	first := encodeAll(t, cluster("b", "10.2.0.0/16"))[0]
	p.Put(first, cluster("cached", "10.2.0.0/16"))
	for i := range 3 * maxPredecodedEntries {
		c := Command{Type: CmdDeleteCluster, Payload: &fedmeshv1.DeleteClusterRequest{Name: "x"}}
		data := encodeAll(t, c)[0]
		p.Put(data, c)
		if n := p.Len(); n > 2*maxPredecodedEntries {
			t.Fatalf("after %d registrations without Forget, %d entries held", i+1, n)
		}
	}
	if !appliedCluster(t, f, 1, first, "b") {
		t.Fatal("an evicted entry was not decoded from its bytes")
	}
}

func TestPredecodedIgnoresWhatIsNotItsCommand(t *testing.T) {
	p := newPredecoded()
	data := encodeAll(t, cluster("b", "10.2.0.0/16"))[0]
	entry, _ := EncodeBatch([][]byte{data})
	p.Put(nil, cluster("b", "10.2.0.0/16"))
	p.Put(entry, cluster("b", "10.2.0.0/16"))
	p.Put(data, Command{Type: CmdDeleteCluster, Payload: &fedmeshv1.DeleteClusterRequest{Name: "b"}})
	if n := p.Len(); n != 0 {
		t.Fatalf("%d entries registered for an empty slice, a batch entry or another command type", n)
	}
}
