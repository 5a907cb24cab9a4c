package main

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPodCIDRsFromTheNodeObject(t *testing.T) {
	nodes := map[string]string{
		"dual":   `{"spec":{"podCIDR":"10.1.2.0/24","podCIDRs":["10.1.2.0/24","fd00:1:2::/64"]}}`,
		"legacy": `{"spec":{"podCIDR":"10.1.3.7/24"}}`,
		"new":    `{"spec":{}}`,
		"bad":    `{"spec":{"podCIDRs":["10.1.4.0/99"]}}`,
	}
	var mu sync.Mutex // nodes changes under the server in the last case
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer sa-token" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		mu.Lock()
		body, ok := nodes[strings.TrimPrefix(r.URL.Path, "/api/v1/nodes/")]
		mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	api := &nodeAPI{base: srv.URL, token: "sa-token", client: srv.Client()}
	for _, tc := range []struct {
		node   string
		want   []string
		errHas string
		errIs  error
	}{
		{node: "dual", want: []string{"10.1.2.0/24", "fd00:1:2::/64"}},
		{node: "legacy", want: []string{"10.1.3.0/24"}},
		{node: "new", errIs: errNoPodCIDR},
		{node: "bad", errHas: `spec.podCIDRs "10.1.4.0/99"`},
		{node: "gone", errHas: "404 Not Found (the agent's service account needs get on nodes)"},
	} {
		t.Run(tc.node, func(t *testing.T) {
			got, err := api.podCIDRs(context.Background(), tc.node)
			switch {
			case tc.errIs != nil && !errors.Is(err, tc.errIs), tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
				t.Fatalf("err = %v, want %v / one containing %q", err, tc.errIs, tc.errHas)
			case tc.errIs == nil && tc.errHas == "" && (err != nil || !slices.Equal(got, tc.want)):
				t.Fatalf("podCIDRs = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	t.Run("waits until the IPAM assigns them", func(t *testing.T) {
		set := func(body string) { mu.Lock(); nodes["late"] = body; mu.Unlock() }
		set(`{"spec":{}}`)
		go func() { time.Sleep(100 * time.Millisecond); set(`{"spec":{"podCIDRs":["10.1.9.0/24"]}}`) }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := api.waitPodCIDRs(ctx, "late", 20*time.Millisecond, slog.New(slog.DiscardHandler))
		if err != nil || !slices.Equal(got, []string{"10.1.9.0/24"}) {
			t.Fatalf("waitPodCIDRs = %v, %v", got, err)
		}
	})
}

func TestNodeLabelsFromTheNodeObjectUnderFlags(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/nodes/rack":
			_, _ = w.Write([]byte(`{"metadata":{"labels":{"rack":"r1","zone":"z1"}}}`))
		case "/api/v1/nodes/bare":
			_, _ = w.Write([]byte(`{"metadata":{}}`))
		default:
			http.Error(w, "forbidden", http.StatusForbidden)
		}
	}))
	defer srv.Close()
	api := &nodeAPI{base: srv.URL, token: "t", client: srv.Client()}
	for _, tc := range []struct {
		node   string
		flags  map[string]string
		want   map[string]string
		errHas string
	}{
		{node: "rack", want: map[string]string{"rack": "r1", "zone": "z1"}},
		{node: "rack", flags: map[string]string{"rack": "r2"}, want: map[string]string{"rack": "r2", "zone": "z1"}},
		{node: "bare", flags: map[string]string{"rack": "r3"}, want: map[string]string{"rack": "r3"}},
		{node: "secret", errHas: "403 Forbidden (the agent's service account needs get on nodes)"},
	} {
		got, err := api.nodeLabels(context.Background(), tc.node)
		if tc.errHas != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("nodeLabels(%s) err = %v, want %q", tc.node, err, tc.errHas)
			}
			continue
		}
		if err != nil {
			t.Fatalf("nodeLabels(%s): %v", tc.node, err)
		}
		if merged := mergeLabels(got, tc.flags); !maps.Equal(merged, tc.want) {
			t.Fatalf("node %s with flags %v: labels %v, want %v", tc.node, tc.flags, merged, tc.want)
		}
	}
}
