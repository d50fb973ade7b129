package flowswitch_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
)

// BenchmarkRx measures the receive path on 64-byte UDP frames, one input
// batch (32 frames) per iteration: RxOnce, then each app drains and frees
// its RX ring and the nexus syncs its channel, as the worker loop would.
// The figure includes that app-side work; the link is refilled with the
// timer stopped. flows=1 is the best case (one flow batch per input batch),
// flows=1024 the worst (every packet its own flow batch and Alloc), and
// flows=100000 adds a flow table far larger than the CPU's L2 cache.
func BenchmarkRx(b *testing.B) {
	const (
		size  = 64
		batch = flowswitch.DefaultBatch
		queue = 4096 // the memif queue length in newRig
	)
	for _, flows := range []int{1, 1024, 100000} {
		b.Run(fmt.Sprintf("flows=%d/size=%d", flows, size), func(b *testing.B) {
			// Two ports, each with its own local port and room for half
			// of the flows (at least flow.DefaultAdvisorySlots).
			slots := max(flows/2, flow.DefaultAdvisorySlots)
			co := channel.Options{Advisories: slots}
			r := newRig(b, flowswitch.Options{AdvisorySlots: slots}, co, co)
			// Frames for every flow, in flow order, at least a queue's
			// worth; the link is refilled from where the last fill ended.
			frames := make([][]byte, max(queue, (flows+batch-1)/batch*batch))
			for f := range flows {
				c := f % 2
				r.registerFrom(b, c, fswRemote(f), uint16(53+c))
			}
			for i := range frames {
				f := i % flows
				frames[i] = udpFrameFrom(b, fswRemote(f), uint16(53+f%2), "bench", size)
			}
			bufs := make([]channel.Buf, 256)
			left, next := 0, 0 // frames queued on the link; next frame to queue
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if left < batch {
					b.StopTimer()
					for left < queue-batch {
						k := min(queue-left, len(frames)-next)
						r.write(b, frames[next:next+k]...)
						left += k
						next = (next + k) % len(frames)
					}
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

// fswRemote is flow f's remote end in the benchmarks: distinct for every f
// below 2^16 × 55536.
func fswRemote(f int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(f >> 8), byte(f)}), uint16(10000+f>>16))
}

// BenchmarkTx measures the transmit path on 64-byte frames (50-byte IPv4/UDP
// packets), one TX batch (64 packets) per iteration: the app allocates,
// fills and sends, the nexus forwards, the peer reads. "switch" forwards
// with TxOnce; "copy" is the same loop with the checks off (take, copy,
// write), the baseline of `skylane bench fsw-tx`, here for profiling;
// "regulated" is TxOnce through the AQM (Regulation, unpaced): the cost of
// the queue's copy, DRR and CoDel per packet.
func BenchmarkTx(b *testing.B) {
	const n = flowswitch.TxBatch
	for _, mode := range []string{"switch", "copy", "regulated"} {
		b.Run(mode, func(b *testing.B) {
			a, peer, err := memif.NewPair(memif.Options{QueueLen: 4096})
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			ch, err := channel.New(channel.Options{Name: "benchtx"})
			if err != nil {
				b.Fatal(err)
			}
			app, err := ch.AttachLocal()
			if err != nil {
				b.Fatal(err)
			}
			defer func() { app.Close(); ch.Close() }()
			o := flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP}}
			if mode == "regulated" {
				// The AQM on the path (unpaced: the wire takes what comes).
				o.Regulation = &flowswitch.RegulationOptions{}
			}
			sw, err := flowswitch.New(o)
			if err != nil {
				b.Fatal(err)
			}
			port, _ := sw.AddPortWith(ch, flowswitch.AddPortOptions{Advisories: true})
			k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 5000), netip.AddrPortFrom(remoteIP, 6000))
			e, err := sw.Register(port, k, flow.Connected)
			if err != nil {
				b.Fatal(err)
			}
			id := e.ID()
			pkt := udp0Pkt(50).build(b)

			// The baseline's nexus side.
			hdr := netif.HeaderLen(packet.Ethernet)
			taken := make([]channel.Buf, n)
			frames := make([][]byte, n)
			for i := range frames {
				frames[i] = make([]byte, netif.MaxFrameLen(a.MTU(), a.LinkType()))
			}
			ids := make([][16]byte, n)
			out := make([][]byte, 0, n)
			forward := func() int {
				k, _ := ch.TakeTX(taken)
				meta := ch.Pool()
				for i, tb := range taken[:k] {
					fr := frames[i]
					c := copy(fr[hdr:], tb.Data)
					copy(ids[i][:], meta.UserMeta(tb.Index)[:16])
					binary.BigEndian.PutUint16(fr[hdr-2:], packet.EtherTypeIPv4)
					out = append(out, fr[hdr-14:hdr+c])
				}
				ch.Release(taken[:k])
				clear(taken[:k])
				a.Write(out)
				out = out[:0]
				return k
			}

			bufs := make([]channel.Buf, n)
			rbufs := make([][]byte, n)
			for i := range rbufs {
				rbufs[i] = make([]byte, netif.MaxFrameLen(peer.MTU(), peer.LinkType()))
			}
			sizes := make([]int, n)
			step := func() {
				for got := 0; got < n; {
					ch.Sync()
					k, _ := app.Alloc(bufs[got:])
					got += k
				}
				for i := range bufs {
					bufs[i].Data = bufs[i].Data[:copy(bufs[i].Data, pkt)]
					m, _ := app.Meta(bufs[i].Index)
					copy(m, id[:])
				}
				app.Send(bufs)
				var k int
				if mode != "copy" {
					k, _ = sw.TxOnce(port)
				} else {
					k = forward()
				}
				if r, _ := peer.Read(rbufs, sizes); k != n || r != n {
					b.Fatalf("forwarded %d, read %d of %d", k, r, n)
				}
			}
			for range 10 {
				step()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				step()
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds()/1e6, "Mpps")
		})
	}
}
