package wireguard

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// sinkAck reads fixed-size batches and acknowledges each with one byte, so
// the sender times data that has really arrived.
func sinkAck(ln net.Listener, batch int) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, batch)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if _, err := c.Write([]byte{1}); err != nil {
					return
				}
			}
		}()
	}
}

// BenchmarkPodToPodThroughput sends TCP from a pod on one node to a pod on
// the other, once through the embedded WireGuard tunnel and once over the
// same underlay without it, in the same run; wg/plain is the ratio.
func BenchmarkPodToPodThroughput(b *testing.B) {
	ctx := context.Background()
	l := newLab(b, true)
	l.startWireGuard(ctx)
	l.sync(ctx, 0)
	l.sync(ctx, 1)
	src, dst := l.nodes[0], l.nodes[1]
	const batch = 32 << 20

	type path struct {
		name string
		conn net.Conn
		dur  time.Duration
	}
	var paths []*path
	for _, p := range []struct {
		name     string
		src, dst labPod
	}{{"wg", src.pod, dst.pod}, {"plain", src.plainPod, dst.plainPod}} {
		ln := p.dst.listen(b)
		go sinkAck(ln, batch)
		c, err := p.src.dial(b, p.dst.ip, 5*time.Second)
		if err != nil {
			b.Fatalf("dial %s path: %v", p.name, err)
		}
		b.Cleanup(func() { c.Close() })
		paths = append(paths, &path{name: p.name, conn: c})
	}
	chunk := make([]byte, 128<<10)
	ack := make([]byte, 1)
	send := func(p *path) {
		start := time.Now()
		for sent := 0; sent < batch; sent += len(chunk) {
			if _, err := p.conn.Write(chunk); err != nil {
				b.Fatalf("send on %s path: %v", p.name, err)
			}
		}
		if _, err := io.ReadFull(p.conn, ack); err != nil {
			b.Fatalf("ack on %s path: %v", p.name, err)
		}
		p.dur += time.Since(start)
	}
	for _, p := range paths { // warm up: handshake, TCP window
		send(p)
		p.dur = 0
	}
	b.SetBytes(2 * batch)
	b.ResetTimer()
	for range b.N {
		for _, p := range paths {
			send(p)
		}
	}
	b.StopTimer()
	mbps := func(p *path) float64 { return float64(b.N) * batch / p.dur.Seconds() / 1e6 }
	b.ReportMetric(mbps(paths[0]), "wg-MB/s")
	b.ReportMetric(mbps(paths[1]), "plain-MB/s")
	b.ReportMetric(mbps(paths[0])/mbps(paths[1]), "wg/plain")
}

// BenchmarkNewPeerHandshakeToTraffic times, for a peer neither node had,
// from configuring it on both nodes to the first TCP connection between
// their pods through the tunnel. The same connect over an established tunnel,
// measured in the same run, is the baseline (new/established).
func BenchmarkNewPeerHandshakeToTraffic(b *testing.B) {
	ctx := context.Background()
	l := newLab(b, false)
	l.startWireGuard(ctx)
	a, dst := l.nodes[0], l.nodes[1]
	ln := dst.pod.listen(b)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	connect := func() {
		for deadline := time.Now().Add(10 * time.Second); ; {
			c, err := a.pod.dial(b, dst.pod.ip, 10*time.Second)
			if err == nil {
				c.Close()
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("no traffic through the new peer: %v", err)
			}
		}
	}
	unpeer := func(i int) {
		n := l.nodes[i]
		want, _ := Desired(n.key, n.node(), l.clusters, []*fedmeshv1.Node{n.node()})
		if _, err := n.dev.Sync(ctx, want); err != nil {
			b.Fatal(err)
		}
	}

	l.sync(ctx, 0)
	l.sync(ctx, 1)
	connect() // warm up: the pod's neighbour entry, first TUN reads

	var established time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		unpeer(0)
		unpeer(1)
		b.StartTimer()
		l.sync(ctx, 0)
		l.sync(ctx, 1)
		connect()
		b.StopTimer()
		start := time.Now()
		connect()
		established += time.Since(start)
		b.StartTimer()
	}
	b.StopTimer()
	perOp := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(established.Microseconds())/float64(b.N), "established-µs")
	b.ReportMetric(float64(perOp)/float64(established/time.Duration(b.N)), "new/established")
}
