package ring_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/skylane/skylane/ring"
)

// BenchmarkSlots moves b.N slots from a producer goroutine to a consumer
// goroutine through a 1024-slot ring, in batches of 1, 32 and 256; one op is
// one slot. The naive baseline is a buffered Go channel of the same depth,
// one slot per send.
func BenchmarkSlots(b *testing.B) {
	const size = 1024
	for _, batch := range []int{1, 32, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			_, p, c := newRing(b, size)
			in := make([]ring.Slot, batch)
			out := make([]ring.Slot, batch)
			total := uint32(b.N)
			done := make(chan uint32)
			var want uint32 // the consumer must see exactly 0..b.N-1
			for i := range total {
				want += i
			}
			go func() {
				var got, sum uint32
				for got < total {
					n, err := c.Dequeue(out)
					if err != nil {
						panic(err)
					}
					if n == 0 {
						runtime.Gosched()
						continue
					}
					for i := range n {
						sum += out[i].Index
					}
					got += uint32(n)
				}
				done <- sum
			}()
			b.ReportAllocs()
			b.ResetTimer() // after the goroutine's start, which allocates
			for sent := uint32(0); sent < total; {
				k := min(batch, int(total-sent))
				for i := range k {
					in[i] = ring.Slot{Index: sent + uint32(i), Len: 64}
				}
				n, err := p.Enqueue(in[:k])
				if err != nil {
					b.Fatal(err)
				}
				if n == 0 {
					runtime.Gosched()
					continue
				}
				sent += uint32(n)
			}
			if sum := <-done; sum != want {
				b.Fatalf("consumer saw index sum %d, want %d", sum, want)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
		})
	}
	b.Run("naive=chan", func(b *testing.B) {
		ch := make(chan ring.Slot, size)
		done := make(chan struct{})
		go func() {
			for range b.N {
				<-ch
			}
			close(done)
		}()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			ch <- ring.Slot{Index: uint32(i), Len: 64}
		}
		<-done
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
	})
}
