package pool_test

import (
	"testing"

	"github.com/skylane/skylane/pool"
)

// BenchmarkAllocFree takes a batch of 32 buffers and gives them back; one op
// is one batch. The pool is steady (no growth, no reaping), as on a busy
// datapath.
func BenchmarkAllocFree(b *testing.B) {
	const batch = 32
	p := newPool(b, pool.Options{MaxSegments: 8})
	out := make([]uint32, batch)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		n := p.Alloc(out, pool.Nexus)
		if n != batch {
			b.Fatalf("Alloc = %d", n)
		}
		for _, idx := range out[:n] {
			if !p.Free(idx) {
				b.Fatalf("Free(%d) refused", idx)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)*batch/b.Elapsed().Seconds()/1e6, "Mbuf/s")
	if s := p.Stats(); s.AllocFails != 0 || s.FreeBuffers != s.BuffersTotal {
		b.Fatalf("after the run: %+v", s)
	}
}
