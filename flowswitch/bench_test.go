package flowswitch_test

import (
	"fmt"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flowswitch"
)

// BenchmarkRx measures the receive path on 64-byte UDP frames, one input
// batch (32 frames) per iteration: RxOnce, then each app drains and frees
// its RX ring and the nexus syncs its channel, as the worker loop would.
// The figure includes that app-side work; the link is refilled with the
// timer stopped. flows=1 is the best case (one flow batch per input batch),
// flows=1024 the worst (every packet its own flow batch and Alloc).
func BenchmarkRx(b *testing.B) {
	const (
		size  = 64
		batch = flowswitch.DefaultBatch
		queue = 4096 // the memif queue length in newRig
	)
	for _, flows := range []int{1, 1024} {
		b.Run(fmt.Sprintf("flows=%d/size=%d", flows, size), func(b *testing.B) {
			r := newRig(b, flowswitch.Options{}, channel.Options{}, channel.Options{})
			// A port has at most flow.DefaultAdvisorySlots (512) flows:
			// spread them over two ports, each with its own local port.
			frames := make([][]byte, queue)
			for f := range flows {
				c := f % 2
				r.register(b, c, uint16(10000+f), uint16(53+c))
			}
			for i := range frames {
				f := i % flows
				frames[i] = udpFrame(b, uint16(10000+f), uint16(53+f%2), "bench", size)
			}
			bufs := make([]channel.Buf, 256)
			left := 0 // frames queued on the link
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if left < batch {
					b.StopTimer()
					r.write(b, frames[:queue-left]...)
					left = queue
					b.StartTimer()
				}
				if n, err := r.sw.RxOnce(); n != batch || err != nil {
					b.Fatalf("RxOnce = %d, %v", n, err)
				}
				left -= batch
				for c := range r.apps {
					for {
						n, _ := r.apps[c].Receive(bufs)
						if n == 0 {
							break
						}
						r.apps[c].Free(bufs[:n])
					}
					r.chans[c].Sync()
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds()/1e6, "Mpps")
			if st := r.sw.Stats(); st.RxRingDrops != 0 || st.AllocFails != 0 {
				b.Errorf("drops: %+v", st)
			}
		})
	}
}
