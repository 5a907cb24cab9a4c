package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
)

// JournalFile is the learned-address journal's name in the state dir.
const JournalFile = "dns-learned.jsonl"

// Journal persists what pods learned from DNS answers, so that a restarted
// agent learns it again (NamePolicy.Restore) with the same absolute expiry:
// a restart never extends a TTL. It is an append-only file of JSON lines,
// one per learned entry or forgotten endpoint, folded in order on load and
// rewritten (compacted) to the live entries at start and whenever it grew
// to more than twice what is live.
//
// An append is one write(2) and no fsync, before the answer is released:
// once write returns, the entry survives the agent process dying in any way
// (the page cache belongs to the kernel). Only a crash of the node loses
// it, and that loses the pinned dataplane state and the pods with it.
// A torn last line (a write cut short) does not decode and is skipped.
//
// Journal is safe for concurrent use.
type Journal struct {
	path string

	mu        sync.Mutex
	f         *os.File
	lines     int
	recording bool     // a compaction is collecting the live entries
	tail      [][]byte // lines appended meanwhile
}

// journalLine is one line: an entry (E, A, N, X) or a forgotten endpoint
// (F).
type journalLine struct {
	E string `json:"e,omitempty"`
	A string `json:"a,omitempty"`
	N string `json:"n,omitempty"`
	X int64  `json:"x,omitempty"` // expiry, Unix nanoseconds
	F string `json:"f,omitempty"`
}

// OpenJournal opens (creating) the journal in dir.
func OpenJournal(dir string) (*Journal, error) {
	path := filepath.Join(dir, JournalFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the learned DNS address journal %s: %w", path, err)
	}
	return &Journal{path: path, f: f}, nil
}

// Path is the journal file.
func (j *Journal) Path() string { return j.path }

// Close closes the file.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.f.Close()
}

// Load folds the journal: every entry not forgotten after it was
// written, once per (endpoint, address, name) with its latest expiry,
// expired ones included. Lines that do not decode are skipped.
func (j *Journal) Load() ([]dataplane.LearnedAddr, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	data, err := os.ReadFile(j.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read the learned DNS address journal %s: %w", j.path, err)
	}
	type key struct {
		ep   string
		addr netip.Addr
		name string
	}
	idx := map[key]int{}
	var out []dataplane.LearnedAddr
	lines := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		lines++
		var l journalLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		if l.F != "" {
			kept := out[:0]
			for _, e := range out {
				if e.Endpoint != l.F {
					kept = append(kept, e)
				}
			}
			out = kept
			clear(idx)
			for i, e := range out {
				idx[key{e.Endpoint, e.Addr, e.Name}] = i
			}
			continue
		}
		addr, err := netip.ParseAddr(l.A)
		if err != nil || l.E == "" || l.N == "" || l.X == 0 {
			continue
		}
		e := dataplane.LearnedAddr{Endpoint: l.E, Addr: addr, Name: l.N, Expires: time.Unix(0, l.X)}
		k := key{e.Endpoint, e.Addr, e.Name}
		if i, ok := idx[k]; ok {
			if e.Expires.After(out[i].Expires) {
				out[i].Expires = e.Expires
			}
			continue
		}
		idx[k] = len(out)
		out = append(out, e)
	}
	j.lines = lines
	return out, nil
}

// Lines is the number of lines in the file since it was loaded or
// compacted.
func (j *Journal) Lines() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lines
}

func encodeEntries(buf *bytes.Buffer, es []dataplane.LearnedAddr) int {
	enc := json.NewEncoder(buf)
	for _, e := range es {
		enc.Encode(journalLine{E: e.Endpoint, A: e.Addr.String(), N: e.Name, X: e.Expires.UnixNano()})
	}
	return len(es)
}

// Append journals learned entries in one write.
func (j *Journal) Append(es []dataplane.LearnedAddr) error {
	var buf bytes.Buffer
	n := encodeEntries(&buf, es)
	return j.write(buf.Bytes(), n)
}

// Forget journals that endpoint's entries are gone.
func (j *Journal) Forget(endpoint string) error {
	b, _ := json.Marshal(journalLine{F: endpoint})
	return j.write(append(b, '\n'), 1)
}

// Replace journals that endpoint holds exactly es, in one write.
func (j *Journal) Replace(endpoint string, es []dataplane.LearnedAddr) error {
	var buf bytes.Buffer
	json.NewEncoder(&buf).Encode(journalLine{F: endpoint})
	n := encodeEntries(&buf, es)
	return j.write(buf.Bytes(), n+1)
}

func (j *Journal) write(b []byte, lines int) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.recording {
		j.tail = append(j.tail, b)
	}
	if _, err := j.f.Write(b); err != nil {
		return fmt.Errorf("append to the learned DNS address journal %s: %w", j.path, err)
	}
	j.lines += lines
	return nil
}

// Compact rewrites the journal to the entries live returns, plus whatever
// was appended while live ran (so an append racing the compaction is not
// lost; folding is idempotent). The new file replaces the old one
// atomically (written, synced, renamed, directory synced).
func (j *Journal) Compact(live func() []dataplane.LearnedAddr) error {
	j.mu.Lock()
	j.recording, j.tail = true, nil
	j.mu.Unlock()
	es := live()

	j.mu.Lock()
	defer j.mu.Unlock()
	tail := j.tail
	j.recording, j.tail = false, nil
	var buf bytes.Buffer
	n := encodeEntries(&buf, es)
	for _, b := range tail {
		buf.Write(b)
		n += bytes.Count(b, []byte{'\n'})
	}
	tmp := j.path + ".tmp"
	if err := writeSynced(tmp, buf.Bytes()); err != nil {
		return fmt.Errorf("compact the learned DNS address journal %s: %w", j.path, err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		return fmt.Errorf("compact the learned DNS address journal %s: %w", j.path, err)
	}
	if d, err := os.Open(filepath.Dir(j.path)); err == nil {
		d.Sync()
		d.Close()
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("reopen the learned DNS address journal %s: %w", j.path, err)
	}
	j.f.Close()
	j.f, j.lines = f, n
	return nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
