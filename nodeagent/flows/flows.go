// Package flows owns the node's flow log: it drains the dataplane's verdict
// events, keeps the most recent ones and streams them to readers over HTTP
// (`GET /flows`, newline-delimited JSON), which `fedctl flows` follows.
package flows

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
)

// Flow is one verdict event as readers see it.
type Flow struct {
	Time        time.Time `json:"time"`
	Cluster     string    `json:"cluster"`
	Node        string    `json:"node"`
	Endpoint    string    `json:"endpoint"`
	Direction   string    `json:"direction"`
	Src         string    `json:"src"`
	Dst         string    `json:"dst"`
	SrcIdentity uint32    `json:"srcIdentity"`
	DstIdentity uint32    `json:"dstIdentity"`
	Proto       uint8     `json:"proto"`
	SrcPort     uint16    `json:"srcPort"`
	DstPort     uint16    `json:"dstPort"`
	Verdict     string    `json:"verdict"`
	Reason      string    `json:"reason"`
	Rule        uint32    `json:"rule"`
}

// Log fans verdict events out to readers. Run owns the event channel; a
// reader that falls behind loses events rather than slowing the dataplane's
// consumer (the ring buffer in the kernel is rate limited already).
type Log struct {
	cluster, node string
	now           func() time.Time

	mu     sync.Mutex
	recent []Flow // ring of the last len(recent) flows
	next   int
	full   bool
	subs   map[chan Flow]struct{}
}

// New returns a log keeping the last keep flows.
func New(cluster, node string, keep int) *Log {
	return &Log{cluster: cluster, node: node, now: time.Now, recent: make([]Flow, keep), subs: map[chan Flow]struct{}{}}
}

// Run consumes events until ctx ends or the channel closes.
func (l *Log) Run(ctx context.Context, events <-chan dataplane.Event) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			l.add(l.flow(ev))
		}
	}
}

func (l *Log) flow(ev dataplane.Event) Flow {
	return Flow{
		Time: l.now().UTC(), Cluster: l.cluster, Node: l.node, Endpoint: ev.EndpointID,
		Direction: ev.Direction.String(), Src: ev.Src.String(), Dst: ev.Dst.String(),
		SrcIdentity: ev.SrcIdentity, DstIdentity: ev.DstIdentity, Proto: ev.Proto,
		SrcPort: ev.SrcPort, DstPort: ev.DstPort, Verdict: ev.Verdict.String(), Reason: ev.Reason.String(),
		Rule: uint32(ev.Rule),
	}
}

func (l *Log) add(f Flow) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.recent) > 0 {
		l.recent[l.next] = f
		l.next = (l.next + 1) % len(l.recent)
		l.full = l.full || l.next == 0
	}
	for ch := range l.subs {
		select {
		case ch <- f:
		default: // slow reader: drop
		}
	}
}

// Recent returns the kept flows, oldest first.
func (l *Log) Recent() []Flow {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.full {
		return append([]Flow(nil), l.recent[:l.next]...)
	}
	return append(append([]Flow(nil), l.recent[l.next:]...), l.recent[:l.next]...)
}

func (l *Log) subscribe() (chan Flow, func()) {
	ch := make(chan Flow, 256)
	l.mu.Lock()
	l.subs[ch] = struct{}{}
	l.mu.Unlock()
	return ch, func() {
		l.mu.Lock()
		delete(l.subs, ch)
		l.mu.Unlock()
	}
}

// ServeHTTP writes the recent flows as NDJSON; with ?follow=true it keeps
// streaming new ones until the client goes away. ?verdict=deny filters.
func (l *Log) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	verdict := r.URL.Query().Get("verdict")
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	var ch chan Flow
	if follow {
		var cancel func()
		ch, cancel = l.subscribe()
		defer cancel()
	}
	for _, f := range l.Recent() {
		if verdict == "" || f.Verdict == verdict {
			if enc.Encode(f) != nil {
				return
			}
		}
	}
	if !follow {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case f := <-ch:
			if verdict != "" && f.Verdict != verdict {
				continue
			}
			if enc.Encode(f) != nil {
				return
			}
		}
	}
}
