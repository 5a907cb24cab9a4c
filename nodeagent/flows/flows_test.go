package flows

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/fedmesh/fedmesh/nodeagent/dataplane"
)

func ev(port uint16, v dataplane.Verdict) dataplane.Event {
	return dataplane.Event{EndpointID: "a/demo/web", Src: netip.MustParseAddr("10.1.1.11"), Dst: netip.MustParseAddr("10.2.1.12"),
		Proto: 6, DstPort: port, Verdict: v, Reason: dataplane.ReasonDenyPolicy}
}

func TestRecentKeepsTheNewestInOrder(t *testing.T) {
	l := New("a", "n1", 3)
	for p := uint16(1); p <= 5; p++ {
		l.add(l.flow(ev(p, dataplane.Deny)))
	}
	got := l.Recent()
	if len(got) != 3 || got[0].DstPort != 3 || got[2].DstPort != 5 {
		t.Fatalf("recent = %+v", got)
	}
}

func TestFollowStreamsFilteredFlowsOverHTTP(t *testing.T) {
	l := New("a", "n1", 10)
	events := make(chan dataplane.Event)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx, events)
	srv := httptest.NewServer(l)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "?follow=true&verdict=deny")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The subscription exists once the headers arrived.
	go func() {
		events <- ev(80, dataplane.Allow)
		events <- ev(8080, dataplane.Deny)
	}()
	lines := make(chan Flow)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var f Flow
			if json.Unmarshal(sc.Bytes(), &f) == nil {
				lines <- f
			}
		}
	}()
	select {
	case f := <-lines:
		if f.Verdict != "deny" || f.DstPort != 8080 || f.Cluster != "a" || f.Src != "10.1.1.11" {
			t.Fatalf("flow = %+v", f)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no flow streamed")
	}
}
