package channel

import (
	"fmt"
	"testing"
)

// BenchmarkRoundTrip moves batches app → nexus and nexus → app on one
// goroutine: the CPU cost per packet of the whole channel path, without
// cross-core effects (skylane bench channel measures those).
func BenchmarkRoundTrip(b *testing.B) {
	for _, batch := range []int{1, 32, 256} {
		for _, size := range []int{64, 1500} {
			b.Run(fmt.Sprintf("batch=%d/size=%d", batch, size), func(b *testing.B) {
				c, err := New(Options{Name: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				a, err := c.AttachLocal()
				if err != nil {
					b.Fatal(err)
				}
				defer a.Close()
				bufs := make([]Buf, batch)
				b.ReportAllocs()
				b.ResetTimer()
				var pkts int
				for b.Loop() {
					// app → nexus
					c.Sync()
					n, _ := a.Alloc(bufs)
					for i := range n {
						bufs[i].Data = bufs[i].Data[:size]
						bufs[i].Data[0] = byte(i)
					}
					n, _ = a.Send(bufs[:n])
					n, _ = c.TakeTX(bufs)
					pkts += n
					c.Release(bufs[:n])
					// nexus → app
					n = c.Alloc(bufs)
					for i := range n {
						bufs[i].Data = bufs[i].Data[:size]
					}
					c.Deliver(bufs[:n])
					n, _ = a.Receive(bufs)
					pkts += n
					a.Free(bufs[:n])
				}
				b.ReportMetric(float64(pkts)/b.Elapsed().Seconds()/1e6, "Mpps")
			})
		}
	}
}
