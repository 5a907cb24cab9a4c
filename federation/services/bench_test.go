package services

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	fedmeshv1 "github.com/fedmesh/fedmesh/proto/fedmesh/v1"
)

// BenchmarkAggregate aggregates one service exported by 20 clusters with
// 50 backends each; the baseline clones the same exports (the least any
// aggregation must do), so the ratio is the rule-checking overhead.
func BenchmarkAggregate(b *testing.B) {
	var xs []*fedmeshv1.ServiceExport
	for c := range 20 {
		var backends []string
		for i := range 50 {
			backends = append(backends, fmt.Sprintf("10.%d.%d.%d", c, i/250, i%250+1))
		}
		xs = append(xs, export(fmt.Sprintf("c%02d", c), uint64(c+1), setIP, backends, port("http", 80, tcp), port("grpc", 9000, tcp)))
	}
	b.Run("baseline-clone", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, x := range xs {
				_ = proto.Clone(x)
			}
		}
	})
	b.Run("aggregate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = Aggregate(xs)
		}
	})
}
