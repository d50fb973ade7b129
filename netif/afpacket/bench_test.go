package afpacket_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/afpacket"
)

// BenchmarkWrite measures transmit rate on a veth, ring against sendmmsg,
// with and without the qdisc, over frame and batch sizes. Frames are UDP
// frames to a MAC the peer does not own, so the peer drops them right at
// eth_type_trans and the figure is the sending side's cost.
func BenchmarkWrite(b *testing.B) {
	for _, mode := range []afpacket.TxMode{afpacket.TxRing, afpacket.TxSendmmsg} {
		for _, bypass := range []bool{false, true} {
			for _, sb := range [][2]int{{64, 1}, {64, 32}, {64, 256}, {1514, 32}} {
				size, batch := sb[0], sb[1]
				name := fmt.Sprintf("%s/bypass=%v/size=%d/batch=%d",
					map[afpacket.TxMode]string{afpacket.TxRing: "ring", afpacket.TxSendmmsg: "sendmmsg"}[mode], bypass, size, batch)
				b.Run(name, func(b *testing.B) {
					v, l := newLink(b, nettest.VethOptions{}, afpacket.Options{TxMode: mode, QdiscBypass: bypass})
					other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
					f := udpFrame(b, v.LocalMAC, other, netip.AddrPortFrom(v.LocalAddr.Addr(), 1),
						netip.AddrPortFrom(v.PeerAddr.Addr(), 9), make([]byte, size-42))
					frames := make([][]byte, batch)
					for i := range frames {
						frames[i] = f
					}
					b.ReportAllocs()
					b.ResetTimer()
					sent := 0
					for sent < b.N {
						n, err := l.Write(frames[:min(batch, b.N-sent)])
						if err != nil {
							b.Fatal(err)
						}
						sent += n
						if n == 0 {
							sent++ // a full ring drops: count the attempt so the loop ends
						}
					}
					b.StopTimer()
					s := l.Stats()
					b.ReportMetric(float64(s.TxPackets)/b.Elapsed().Seconds()/1e6, "Mpps")
					b.ReportMetric(float64(s.TxDrops)/float64(max(1, s.TxPackets+s.TxDrops)), "drop-ratio")
				})
			}
		}
	}
}

// BenchmarkWriteSuper measures sending 64000 bytes of TCP payload as one
// super packet (the kernel segments it, or the veth carries it whole)
// against the baseline of sending it as MTU-sized frames, in both transmit
// modes. As in BenchmarkWrite the frames go to a MAC the peer does not own,
// so the figure is the sending side's cost.
func BenchmarkWriteSuper(b *testing.B) {
	const payload = 64000
	for _, mode := range []afpacket.TxMode{afpacket.TxRing, afpacket.TxSendmmsg} {
		for _, super := range []bool{false, true} {
			name := fmt.Sprintf("%s/super=%v",
				map[afpacket.TxMode]string{afpacket.TxRing: "ring", afpacket.TxSendmmsg: "sendmmsg"}[mode], super)
			b.Run(name, func(b *testing.B) {
				v, l := newLink(b, nettest.VethOptions{}, afpacket.Options{TxMode: mode})
				other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
				frame := func(n int) []byte {
					return ethFrame(b, v.LocalMAC, other, v.LocalAddr.Addr(), v.PeerAddr.Addr(),
						&layers.TCP{SrcPort: 1, DstPort: 9, ACK: true}, make([]byte, n))
				}
				var frames [][]byte
				if super {
					frames = [][]byte{frame(payload)}
				} else {
					mss := l.MTU() - 40
					for left := payload; left > 0; left -= mss {
						frames = append(frames, frame(min(mss, left)))
					}
				}
				b.ReportAllocs()
				b.SetBytes(payload)
				b.ResetTimer()
				for range b.N {
					if _, err := l.Write(frames); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				s := l.Stats()
				b.ReportMetric(float64(s.TxDrops)/float64(max(1, s.TxPackets+s.TxDrops)), "drop-ratio")
			})
		}
	}
}
