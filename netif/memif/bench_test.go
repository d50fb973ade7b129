package memif_test

import (
	"fmt"
	"testing"

	"github.com/skylane/skylane/netif/memif"
)

// BenchmarkPair writes a batch on one end and reads it on the other, in one
// goroutine, sweeping frame size × batch; one op is one frame. Batch 1 is the
// naive per-frame baseline: one lock per frame instead of one per batch.
func BenchmarkPair(b *testing.B) {
	for _, size := range []int{64, 1500} {
		for _, batch := range []int{1, 32} {
			b.Run(fmt.Sprintf("size=%d/batch=%d", size, batch), func(b *testing.B) {
				x, y := newPair(b, memif.Options{})
				frames := make([][]byte, batch)
				for i := range frames {
					frames[i] = frame(uint64(i), size)
				}
				bufs, sizes := bufsFor(y, batch)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for moved := 0; moved < b.N; {
					n, err := x.Write(frames)
					if err != nil || n != batch {
						b.Fatalf("Write = %d, %v", n, err)
					}
					n, err = y.Read(bufs, sizes)
					if err != nil || n != batch {
						b.Fatalf("Read = %d, %v", n, err)
					}
					moved += n
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
			})
		}
	}
}

// BenchmarkPairConcurrent moves b.N 64-byte frames from a writer goroutine
// to a reader goroutine that blocks in Wait, as a device loop does; one op is
// one frame. The writer resends what a full queue tail-dropped.
func BenchmarkPairConcurrent(b *testing.B) {
	for _, batch := range []int{1, 32} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			x, y := newPair(b, memif.Options{})
			frames := make([][]byte, batch)
			for i := range frames {
				frames[i] = frame(uint64(i), 64)
			}
			done := make(chan error)
			b.ReportAllocs()
			b.ResetTimer()
			go func() {
				bufs, sizes := bufsFor(y, batch)
				for got := 0; got < b.N; {
					if err := y.Wait(-1); err != nil {
						done <- err
						return
					}
					n, err := y.Read(bufs, sizes)
					if err != nil {
						done <- err
						return
					}
					got += n
				}
				done <- nil
			}()
			for sent := 0; sent < b.N; {
				n, err := x.Write(frames[:min(batch, b.N-sent)])
				if err != nil {
					b.Fatal(err)
				}
				sent += n
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
		})
	}
}
